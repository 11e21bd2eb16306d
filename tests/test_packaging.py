"""The built wheel, installed into a fresh venv and run from outside the repository.

Catches what the in-repo tests cannot: a module or a JSON Schema that does not travel in
the wheel, a broken console script, a dependency missing from ``[project.dependencies]``.
Only the package index is reached over the network (by pip, for the build backend and the
runtime dependencies; pip's cache makes a second run fast).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
VERSION: str = PYPROJECT["project"]["version"]
SCHEMA_SUFFIX = ".schema.json"
# Never copied into the build tree: a stale build/lib would put deleted modules in the wheel.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".hypothesis",
)


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    elsewhere: Path  # a working directory with no agent/ or schemas/ in it

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            cwd=self.elsewhere,
            env=clean_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


def clean_env() -> dict[str, str]:
    """The environment without anything that would let the repo's sources leak in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"}
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def checked(argv: list[str], cwd: Path, timeout: float) -> None:
    result = subprocess.run(
        argv, cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"


def repo_schema_names() -> set[str]:
    return {
        path.name[: -len(SCHEMA_SUFFIX)] for path in (REPO / "schemas").glob(f"*{SCHEMA_SUFFIX}")
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    source = base / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE)
    wheels = base / "wheels"
    checked(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), "."],
        cwd=source,
        timeout=180,
    )
    [wheel] = wheels.glob("tailhook-*.whl")
    venv = base / "venv"
    checked([sys.executable, "-m", "venv", str(venv)], cwd=base, timeout=60)
    checked(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", str(wheel)],
        cwd=base,
        timeout=180,
    )
    elsewhere = base / "elsewhere"
    elsewhere.mkdir()
    return Installed(wheel=wheel, venv=venv, elsewhere=elsewhere)


def test_wheel_holds_every_module_and_schema(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as archive:
        names = set(archive.namelist())
    modules = {
        path.relative_to(REPO).as_posix()
        for path in (REPO / "agent").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules - names == set(), "modules missing from the wheel"
    schemas = {f"agent/schema_data/{name}{SCHEMA_SUFFIX}" for name in repo_schema_names()}
    assert schemas, "no schemas found in the repository"
    assert schemas - names == set(), "schemas missing from the wheel"
    top_level = {name.split("/", 1)[0] for name in names}
    assert top_level == {"agent", f"tailhook-{VERSION}.dist-info"}


def test_imports_come_from_the_venv(installed: Installed) -> None:
    result = installed.run(installed.bin("python"), "-c", "import agent; print(agent.__file__)")
    assert result.returncode == 0, result.stderr
    origin = Path(result.stdout.strip()).resolve()
    assert origin.is_relative_to(installed.venv.resolve()), origin


def test_console_script_version(installed: Installed) -> None:
    result = installed.run(installed.bin("tailhook"), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tailhook {VERSION}"


def test_python_m_agent_version(installed: Installed) -> None:
    result = installed.run(installed.bin("python"), "-m", "agent", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"tailhook {VERSION}"


def test_schemas_are_installed_in_the_package(installed: Installed) -> None:
    code = (
        "from agent.schemas import load_schema, schema_names\n"
        "names = schema_names()\n"
        "for name in names: load_schema(name)\n"
        "print(' '.join(names))\n"
    )
    result = installed.run(installed.bin("python"), "-c", code)
    assert result.returncode == 0, result.stderr
    names = set(result.stdout.split())
    assert {"config", "hit", "notification-hit"} <= names
    assert names == repo_schema_names()


def test_validate_a_native_hit_line(installed: Installed) -> None:
    lines = (REPO / "tests" / "data" / "native" / "detections.jsonl").read_text("utf-8")
    hit = next(line for line in lines.splitlines() if '"event":"hit"' in line)
    sample = installed.elsewhere / "hit.jsonl"
    sample.write_text(hit + "\n", encoding="utf-8")
    result = installed.run(installed.bin("tailhook"), "validate", str(sample))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(("shell", "name"), [("bash", "tailhook.bash"), ("zsh", "_tailhook")])
def test_completion_scripts_travel_in_the_wheel(
    installed: Installed, shell: str, name: str
) -> None:
    result = installed.run(installed.bin("tailhook"), "completion", shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (REPO / "agent" / "completions" / name).read_text("utf-8")
