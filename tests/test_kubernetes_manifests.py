"""deploy/kubernetes: every manifest validated offline against the Kubernetes schemas
(``kubernetes-validate``, strict: an unknown field is an error), the Pod Security
"restricted" settings on every container, and what ties the files together: the probes
and port, the ConfigMap mounted so a change is a reload, the state volume and
``state_dir``, the grace period against ``shutdown_timeout``, the PodMonitor's
selector and port."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from agent.config import load_config
from agent.service import STOP_MARGIN
from tests.support.agent_process import REPO

DEPLOY = REPO / "deploy" / "kubernetes"
WORKLOADS = ("sidecar.yaml", "native-sidecar.yaml", "daemonset.yaml")
#: The oldest Kubernetes with native sidecars on by default, and the newest bundled.
VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
CRD_KINDS = {"PodMonitor", "PrometheusRule"}
#: Pod Security "restricted": the volume types it admits.
RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
MEASURED_PEAK_RSS = 60 * 2**20  # README "Performance": 80,000 events/s


def documents(name: str) -> list[dict[str, Any]]:
    with (DEPLOY / name).open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def manifest_files() -> list[str]:
    return sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")


def pod_spec(name: str) -> dict[str, Any]:
    (workload,) = documents(name)
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def tailhook_container(spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in all_containers(spec) if c["name"] == "tailhook"]
    return container


def quantity(value: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for unit, factor in units.items():
        if value.endswith(unit):
            return int(value.removesuffix(unit)) * factor
    return int(value)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name", manifest_files())
def test_every_manifest_validates_against_the_kubernetes_schemas(name: str, version: str) -> None:
    for doc in documents(name):
        if doc["kind"] in CRD_KINDS:
            continue  # no schema ships for CRDs: checked below and in test_alerts.py
        kubernetes_validate.validate(doc, version, strict=True)


def test_a_mistyped_field_is_caught() -> None:
    """The validation above is strict: it would catch a typo in a security setting."""
    spec = pod_spec("sidecar.yaml")
    (workload,) = documents("sidecar.yaml")
    tailhook_container(spec)["securityContext"]["runAsUsr"] = 10001
    with pytest.raises(kubernetes_validate.ValidationError) as raised:
        kubernetes_validate.validate(
            {**workload, "spec": {**workload["spec"], "template": {"spec": spec}}},
            VERSIONS[0],
            strict=True,
        )
    assert "'runAsUsr' was unexpected" in raised.value.message


def test_the_kustomization_lists_files_that_exist_and_names_the_alternatives() -> None:
    kustomization = (DEPLOY / "kustomization.yaml").read_text()
    resources = yaml.safe_load(kustomization)["resources"]
    assert all((DEPLOY / name).is_file() for name in resources)
    assert set(manifest_files()) - set(resources) == {"native-sidecar.yaml", "daemonset.yaml"}
    assert "native-sidecar.yaml" in kustomization and "daemonset.yaml" in kustomization


def test_kustomize_renders_valid_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # Not in Debian's own archive: .ci/run installs it where an apt source offers it.
        # The resources it would render are each validated above all the same.
        pytest.skip("kubectl (kustomize) is not installed")
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert sorted(doc["kind"] for doc in rendered) == [
        "ConfigMap",
        "Deployment",
        "PodMonitor",
        "PrometheusRule",
        "Secret",
    ]
    for doc in rendered:
        if doc["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def restricted_problems(spec: dict[str, Any]) -> list[str]:
    """What in a pod spec Pod Security "restricted" (and a read-only root) refuses,
    the container's settings taking precedence over the pod's."""
    problems = [f"pod sets {key}" for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    pod = spec.get("securityContext", {})
    for container in all_containers(spec):
        name = container["name"]
        effective = {**pod, **container.get("securityContext", {})}
        if effective.get("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        user = effective.get("runAsUser")
        if not isinstance(user, int) or user == 0:
            problems.append(f"{name}: runAsUser is not a numeric non-root uid")
        if effective.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if effective.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = effective.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities do not drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities add {capabilities['add']}")
        if effective.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if effective.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: readOnlyRootFilesystem is not true")
        if any("hostPort" in port for port in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if kinds - RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    return problems


@pytest.mark.parametrize("name", ["sidecar.yaml", "native-sidecar.yaml"])
def test_the_sidecar_pods_meet_pod_security_restricted(name: str) -> None:
    assert restricted_problems(pod_spec(name)) == []


def test_the_daemonset_breaks_restricted_only_by_its_host_paths() -> None:
    """hostPath is what a node agent is for; every container setting is restricted."""
    spec = pod_spec("daemonset.yaml")
    assert restricted_problems(spec) == [
        "volume node-logs: ['hostPath']",
        "volume tailhook-state: ['hostPath']",
    ]
    mounts = {m["name"]: m for m in tailhook_container(spec)["volumeMounts"]}
    assert mounts["node-logs"].get("readOnly") is True
    (daemonset,) = documents("daemonset.yaml")
    assert daemonset["spec"]["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0


def test_the_restricted_check_refuses_what_restricted_refuses() -> None:
    spec = pod_spec("sidecar.yaml")
    container = tailhook_container(spec)
    container["securityContext"] = {**container["securityContext"], "runAsUser": 0}
    del container["securityContext"]["readOnlyRootFilesystem"]
    spec["securityContext"] = {}
    assert restricted_problems(spec) == [
        "tailhook: runAsUser is not a numeric non-root uid",
        "tailhook: readOnlyRootFilesystem is not true",
    ]


def config_from_the_configmap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (configmap,) = documents("configmap.yaml")
    (secret,) = documents("secret.yaml")
    for key, value in secret["stringData"].items():
        monkeypatch.setenv(key, value)
    path = tmp_path / "config.yaml"
    path.write_text(configmap["data"]["config.yaml"])
    return load_config(path)


@pytest.mark.parametrize("name", WORKLOADS)
def test_the_tailhook_container_is_wired_to_its_config_state_probes_and_port(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_the_configmap(tmp_path, monkeypatch)
    spec = pod_spec(name)
    container = tailhook_container(spec)
    (port,) = container["ports"]
    assert (port["name"], port["containerPort"]) == ("tailhook", 9717)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "tailhook"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "tailhook"}
    assert container["envFrom"] == [{"secretRef": {"name": "tailhook-secrets"}}]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    # The config as a directory: a subPath mount never sees a ConfigMap update.
    assert mounts["tailhook-config"]["mountPath"] == "/etc/tailhook"
    assert "subPath" not in mounts["tailhook-config"]
    assert volumes["tailhook-config"]["configMap"]["name"] == "tailhook-config"
    # state_dir: a directory inside the state volume (tailhook creates it 0700).
    state_mount = Path(mounts["tailhook-state"]["mountPath"])
    assert config.state_dir.parent == state_mount
    state_volume = volumes["tailhook-state"]
    if "emptyDir" in state_volume:
        assert quantity(state_volume["emptyDir"]["sizeLimit"]) >= 2 * config.spool.max_bytes
    # Sizing from the measured figures: the request holds the measured peak.
    resources = container["resources"]
    assert quantity(resources["requests"]["memory"]) >= MEASURED_PEAK_RSS
    assert quantity(resources["limits"]["memory"]) >= 4 * MEASURED_PEAK_RSS
    assert {"cpu", "memory"} <= set(resources["requests"]) & set(resources["limits"])
    # The grace period covers shutdown_timeout and what stopping takes beyond it.
    assert spec["terminationGracePeriodSeconds"] >= config.shutdown_timeout + STOP_MARGIN
    assert spec["automountServiceAccountToken"] is False


def test_the_configmaps_config_reads_the_shared_log_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_from_the_configmap(tmp_path, monkeypatch)
    (source,) = config.sources
    for name in WORKLOADS:
        mounts = {
            m["name"]: m["mountPath"] for m in tailhook_container(pod_spec(name))["volumeMounts"]
        }
        logs = mounts.get("waf-logs") or mounts["node-logs"]
        assert all(Path(path).parent == Path(logs) for path in source.paths)
    waf = {c["name"]: c for c in pod_spec("sidecar.yaml")["containers"]}["waf"]
    assert {m["name"]: m["mountPath"] for m in waf["volumeMounts"]}["waf-logs"] == logs


def test_the_native_sidecar_is_a_restartable_init_container_the_waf_waits_for() -> None:
    spec = pod_spec("native-sidecar.yaml")
    (init,) = spec["initContainers"]
    assert init["name"] == "tailhook" and init["restartPolicy"] == "Always"
    assert init["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "tailhook"}
    assert [c["name"] for c in spec["containers"]] == ["waf"]


def test_the_podmonitor_scrapes_every_workload_on_the_tailhook_port() -> None:
    (monitor,) = documents("podmonitor.yaml")
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("tailhook", "/metrics")
    assert {"action": "replace", "targetLabel": "job", "replacement": "tailhook"} in endpoint[
        "relabelings"
    ]
    for name in WORKLOADS:
        (workload,) = documents(name)
        template = workload["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items()
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == "9717"
        assert annotations["prometheus.io/path"] == endpoint["path"]
