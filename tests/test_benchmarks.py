"""The benchmarks run and print their figures (on a few lines: no timing is asserted,
a tiny run misses its targets as often as not), and the realistic lines they measure
are valid hits the floor maps as the native format does."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name: str) -> ModuleType:
    """A benchmark module by name (the scripts import each other as top-level modules)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))
    module = importlib.import_module(name)
    assert Path(str(module.__file__)).parent == BENCHMARKS, module
    return module


def run(script: str, *args: str) -> str:
    """Run a benchmark script; its output (exit 0: targets met, 1: missed, not a crash)."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.stdout


def test_realistic_lines_are_valid_hits_of_about_800_bytes_mapped_as_the_format_does(
    tmp_path: Path,
) -> None:
    lines, stages = load("lines"), load("stages")
    path = tmp_path / "hits.log"
    size = lines.write_realistic_lines(path, 2000)
    assert 780 <= size / 2000 <= 820
    stages.check_floor_matches_format(path, 2000)  # raises SystemExit on a difference
    addresses = [orjson.loads(line)["client"]["addr"] for line in path.read_bytes().splitlines()]
    assert any(":" in addr and not addr.startswith("::ffff:") for addr in addresses)
    assert any(addr.startswith("::ffff:") for addr in addresses)
    assert any("." in addr and ":" not in addr for addr in addresses)


@pytest.mark.slow
def test_throughput_prints_both_cases_against_their_targets(tmp_path: Path) -> None:
    out = run("throughput.py", "--events", "2000", "--dir", str(tmp_path))
    for case in ("== case 475: 2,000 lines", "== case 800: 2,000 lines"):
        assert case in out
    for line in (
        "floor (in-process):",
        "agent (tailhook run):",
        "receiver:",
        "spool keep (segment + checkpoint, 1 txn/read)",
        "delivery: headers + HTTP exchange",
        "agent CPU / floor CPU:",
        "agent rate / floor rate:",
        "agent peak RSS:",
    ):
        assert out.count(line) == 2, line
    assert out.rstrip().endswith(("all targets met", "a target was missed"))


@pytest.mark.slow
def test_latency_prints_percentiles_against_the_target(tmp_path: Path) -> None:
    out = run("latency.py", "--seconds", "1", "--rate", "500", "--dir", str(tmp_path))
    assert "500 lines at 500/s" in out
    assert "append -> receipt: p50 " in out
    assert "target <= 20 ms" in out


@pytest.mark.slow
def test_backlog_memory_prints_each_step_against_the_target(tmp_path: Path) -> None:
    out = run("backlog_memory.py", "--events", "2000", "--dir", str(tmp_path))
    for step in ("200", "600", "2,000"):
        assert any(row.split()[:1] == [step] for row in out.splitlines()), step
    assert "backlog gauge at the end: 2,000 events" in out
    assert "peak RSS growth from 200 to 2,000 events:" in out


def test_latency_percentiles_and_the_receivers_stamps() -> None:
    latency, receiver = load("latency"), load("receiver")
    ordered = list(range(1, 101))
    assert [latency.percentile(ordered, q) for q in (0.5, 0.99, 1.0)] == [50, 99, 100]
    template = latency.stamped_templates(1)[0]
    line = template.replace(latency.PLACEHOLDER, b"t%020d" % 1_000, 1)
    body = orjson.dumps([{"id": orjson.loads(line)["ids"], "object_type": "hit"}])
    assert receiver.latencies_of(body, 4_000) == [3_000]
