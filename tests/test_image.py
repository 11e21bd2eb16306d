"""The container image, checked without a container engine (there is none here).

- ``hadolint`` (from PyPI) finds nothing in the ``Dockerfile``, OCI labels required.
- The final stage installs nothing (no ``RUN``), runs a numeric non-root ``USER``, stops
  on SIGTERM, starts in exec form, and its version label is tailhook's.
- The image's file system, built and run as the Dockerfile says: the build stage's
  ``RUN`` is executed as written (Debian 12's ``python3``, the one distroless's
  ``python3-debian12`` ships, in a mount namespace where ``/opt/tailhook`` is a
  temporary directory); then ``ENTRYPOINT`` + ``CMD`` run with the final stage's ``ENV``
  and ``USER`` (no capabilities, ``no_new_privs``) chrooted into a root that is read-only
  but for the state volume, mounted as Kubernetes mounts an ``emptyDir`` with
  ``fsGroup`` (group-writable, setgid). It gets ready, delivers a line, keeps its state
  in a 0700 subdirectory and stops with 0 on SIGTERM, logging nothing above info.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from agent import __version__
from agent.config import parse_listen_address
from tests.agent_support import hit_line, received_ids
from tests.support.agent_process import REPO
from tests.support.receiver import Receiver

DOCKERFILE = REPO / "Dockerfile"
DEBIAN_PYTHON = Path("/usr/bin/python3")
HADOLINT_LABELS = (
    "org.opencontainers.image.title:text",
    "org.opencontainers.image.description:text",
    "org.opencontainers.image.version:semver",
    "org.opencontainers.image.licenses:spdx",
)


@dataclass
class Stage:
    """One ``FROM`` of the Dockerfile and its instructions (continuations joined)."""

    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in re.findall(r'(\w+)=("[^"]*"|\S+)', args):
                values[pair[0]] = pair[1].strip('"')
        return values

    def labels(self) -> dict[str, str]:
        return dict(re.findall(r'([\w.]+)="([^"]*)"', " ".join(self.all("LABEL"))))


def dockerfile_stages() -> list[Stage]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(Stage(args.split()[0]))
        else:
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(part, str) for part in value)
    return value


def test_hadolint_finds_nothing_with_the_oci_labels_required() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    labels = [f"--require-label={label}" for label in HADOLINT_LABELS]
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold=style", *labels, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_the_final_stage_installs_nothing_and_runs_as_a_numeric_user() -> None:
    build, final = dockerfile_stages()
    assert "distroless/python3-debian12" in final.base  # Debian 12's Python, no shell
    assert final.all("RUN") == []  # nothing installed, compiled or fetched there
    uid, _, gid = final.one("USER").partition(":")
    assert uid.isdigit() and int(uid) >= 10000 and gid.isdigit()
    assert final.one("STOPSIGNAL") == "SIGTERM"
    assert exec_form(final.one("ENTRYPOINT")) == ["/opt/tailhook/bin/tailhook"]
    assert exec_form(final.one("CMD")) == ["run"]
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert parse_listen_address(env["TAILHOOK_METRICS_LISTEN"]) == ("0.0.0.0", 9717)
    assert final.labels()["org.opencontainers.image.version"] == __version__
    # What the build leaves for the final stage: no pip, no setuptools.
    assert "pip uninstall --yes --disable-pip-version-check pip setuptools" in build.all("RUN")[-1]


def test_the_pinned_python3_venv_is_debian_12s() -> None:
    """The build stage pins ``python3-venv``; on this Debian 12 machine it must be the
    version installed (a pin Debian no longer has would break the build)."""
    if shutil.which("dpkg-query") is None:
        pytest.skip("not a Debian machine")
    (build, _) = dockerfile_stages()
    pin = re.search(r"python3-venv=(\S+)", build.all("RUN")[0])
    assert pin is not None
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-venv"], capture_output=True, text=True
    )
    assert done.stdout == pin.group(1)


# -- the image's file system, run read-only --------------------------------------------


def require_namespaces() -> None:
    problem = None
    if os.geteuid() != 0:
        problem = "needs root for mount namespaces and chroot"
    elif not DEBIAN_PYTHON.exists() or shutil.which("unshare") is None:
        problem = "needs Debian's /usr/bin/python3 and util-linux's unshare"
    if problem and os.environ.get("CI"):
        pytest.fail(problem + " (.ci/run provides them)")
    if problem:
        pytest.skip(problem)


def build_the_venv(tmp_path: Path) -> Path:
    """The build stage's last ``RUN``, as written, with its ``COPY``s as its working
    directory; ``/opt/tailhook`` and ``/var/lib`` are private to it."""
    build, _ = dockerfile_stages()
    run = build.all("RUN")[-1]
    assert run.startswith("python3 -m venv /opt/tailhook")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("agent", "schemas"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "opt-tailhook"
    venv.mkdir()
    script = (
        "set -eu\n"
        "mount -t tmpfs tmpfs /opt && mkdir /opt/tailhook\n"
        'mount --bind "$VENV" /opt/tailhook\n'
        "mount -t tmpfs tmpfs /var/lib\n"
        'cd "$SRC"\n'
        '/bin/sh -c "$RUN"\n'
        'test "$(stat -c %a /var/lib/tailhook)" = 700\n'
    )
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "VENV": str(venv), "SRC": str(src)}
    # The machine's pip settings that reach the index (a CA bundle, a timeout), if any.
    env |= {k: v for k, v in os.environ.items() if k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")}
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
        env={**env, "RUN": run},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


ROOT_SCRIPT = """set -eu
R="$ROOT"
mount -t tmpfs -o mode=0755 tmpfs "$R"
mkdir -p "$R/usr" "$R/proc" "$R/dev" "$R/tmp" "$R/etc/tailhook" "$R/etc/ssl" \
  "$R/opt/tailhook" "$R/var/lib/tailhook" "$R/var/log/wallarm"
for link in bin lib lib64 sbin; do ln -s "usr/$link" "$R/$link"; done
for name in passwd group hosts nsswitch.conf; do
  touch "$R/etc/$name"; mount --bind "/etc/$name" "$R/etc/$name"
done
cp "$CONFIG" "$R/etc/tailhook/config.yaml"
mount --rbind /etc/ssl "$R/etc/ssl"
mount --rbind /usr "$R/usr"
mount --rbind /dev "$R/dev"
mount --rbind /proc "$R/proc"
mount --bind "$VENV" "$R/opt/tailhook"
mount --bind "$LOGS" "$R/var/log/wallarm"
for path in etc/passwd etc/group etc/hosts etc/nsswitch.conf etc/ssl usr opt/tailhook \
    var/log/wallarm; do
  mount -o remount,bind,ro "$R/$path"
done
mount -o remount,ro "$R"
mount -t tmpfs -o mode=2775,gid=$GID,size=64m tmpfs "$R/var/lib/tailhook"
exec chroot "$R" /usr/bin/setpriv --reuid="$UID_" --regid="$GID" --clear-groups \
  --no-new-privs --inh-caps=-all --bounding-set=-all -- /usr/bin/env -i "$@"
"""

CONFIG = """state_dir: /var/lib/tailhook/state
spool: {{max_bytes: 32MiB}}
sources:
  - {{name: waf, type: file, paths: ["/var/log/wallarm/*.log"]}}
webhooks:
  - name: soc
    url: {url}
    events: [hit]
    batch: {{max_wait: 50ms}}
shutdown_timeout: 5s
"""


def container_command(tmp_path: Path, venv: Path, logs: Path, url: str) -> list[str]:
    """The final stage's ENTRYPOINT + CMD, as its USER, with its ENV (the metrics port
    made 0, so that nothing else on this machine is in the way)."""
    _, final = dockerfile_stages()
    env = final.env()
    host, _ = parse_listen_address(env["TAILHOOK_METRICS_LISTEN"])
    env["TAILHOOK_METRICS_LISTEN"] = f"{host}:0"
    uid, _, gid = final.one("USER").partition(":")
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(url=url))
    root = tmp_path / "root"
    root.mkdir()
    variables = {
        "ROOT": root,
        "CONFIG": config,
        "VENV": venv,
        "LOGS": logs,
        "UID_": uid,
        "GID": gid,
    }
    prefix = ["env", *(f"{key}={value}" for key, value in variables.items())]
    unshare = ["unshare", "--mount", "--propagation", "private", "bash", "-c", ROOT_SCRIPT]
    argv = [*exec_form(final.one("ENTRYPOINT")), *exec_form(final.one("CMD"))]
    return [*prefix, *unshare, "container", *(f"{k}={v}" for k, v in env.items()), *argv]


def log_entries(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_the_image_runs_read_only_as_its_user_with_state_on_a_volume(tmp_path: Path) -> None:
    require_namespaces()
    venv = build_the_venv(tmp_path)
    site = next((venv / "lib").glob("python3*/site-packages"))
    left = sorted(p.name for p in site.iterdir() if p.name.startswith(("pip", "setuptools")))
    assert left == []
    assert sorted(p.name for p in (venv / "bin").iterdir() if "pip" in p.name) == []
    logs = tmp_path / "logs"
    logs.mkdir()
    log_path = tmp_path / "agent.log"
    with Receiver() as receiver, log_path.open("wb") as log:
        command = container_command(tmp_path, venv, logs, receiver.url)
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
        try:
            base = wait_for_start(process, log_path)
            assert base.startswith("http://0.0.0.0:")  # the image's address, every one
            base = base.replace("0.0.0.0", "127.0.0.1")
            assert requests.get(base + "/readyz", timeout=5).status_code == 200
            (logs / "waf.log").write_bytes(hit_line(1) + b"\n")
            assert receiver.wait_for(1, 15)
            assert received_ids(receiver.bodies_json()) == ["hit-1"]
            assert mount_options(process.pid) == {"/": "ro", "/var/lib/tailhook": "rw"}
            state = Path(f"/proc/{process.pid}/root/var/lib/tailhook/state")
            st = state.stat()
            # 02700: the setgid bit comes from the fsGroup volume; no one else may write.
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o2700, 10001)
            spool = (state / "spool.db").stat()
            assert (stat.S_IMODE(spool.st_mode), spool.st_uid) == (0o600, 10001)
            rss_kib = peak_rss_kib(process.pid)
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    entries = log_entries(log_path)
    assert [e for e in entries if e["level"] != "info"] == []
    print(f"peak RSS in the read-only root: {rss_kib / 1024:.1f} MiB")


def wait_for_start(process: subprocess.Popen[bytes], log_path: Path) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the container exited: {log_path.read_text()}")
        for line in log_path.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("message") == "tailhook is running":
                return str(entry["metrics"]).removesuffix("/metrics")
        time.sleep(0.05)
    raise AssertionError(f"the container did not start: {log_path.read_text()}")


def mount_options(pid: int) -> dict[str, str]:
    """``ro`` or ``rw`` of the process's root and of its state volume (mountinfo)."""
    found = {}
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_point, options = fields[4], fields[5].split(",")
        if mount_point in ("/", "/var/lib/tailhook"):
            found[mount_point] = options[0]
    return found


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")
