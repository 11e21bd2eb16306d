"""How long ``tailhook check-config`` takes on a big config: 2,000 webhooks with every
setting and 20 sources (about 1 MB of YAML), and where the time goes in-process.

    python benchmarks/config_load.py [--runs N]

Prints the best of N wall times of the real command, then the best of N of each step
of ``parse_config`` (YAML, ``${NAME}``, schema, kinds and rules, building).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from agent.config.document import read_yaml, substitute_env  # noqa: E402
from agent.config.keys import TABLE  # noqa: E402
from agent.config.load import _config_validators  # noqa: E402

HOOK = """\
  - name: hook{n}
    url: https://siem{n}.example.com/hooks/wallarm
    method: POST
    headers: {{Authorization: 'Bearer ${{TOKEN}}', X-Tenant: 't{n}', X-Other: 'o'}}
    tls: {{verify: true, ca_file: {ca}}}
    request_timeout: 15s
    connect_timeout: 20s
    events: [hit, vulnerability, system, scope]
    enabled: true
    batch: {{max_events: 500, max_bytes: 1MiB, max_wait: 200ms}}
    retry: {{initial_backoff: 1s, max_backoff: 5m, max_elapsed: 24h}}
    signing: {{secrets: [whsec_YWJjZA==, whsec_ZWZnaA==]}}
"""
SOURCES = """\
  - {{name: f{n}, type: file, paths: ['/var/log/w{n}/*.log'], max_line_bytes: 1MiB}}
  - {{name: s{n}, type: unix_socket, path: /run/s{n}.sock, socket_mode: '0660'}}
"""


def big_config(directory: Path) -> Path:
    ca = directory / "ca.pem"
    ca.write_text("pem\n")
    text = f"state_dir: {directory}/state\nsources:\n"
    text += "".join(SOURCES.format(n=n) for n in range(10))
    text += "webhooks:\n" + "".join(HOOK.format(n=n, ca=ca) for n in range(2000))
    path = directory / "big.yaml"
    path.write_text(text)
    return path


def best_of(runs: int, step: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = step()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    env = {**os.environ, "TOKEN": "secret"}
    with tempfile.TemporaryDirectory() as directory:
        path = big_config(Path(directory))
        command = [sys.executable, "-m", "agent", "check-config", "-c", str(path)]

        def check_config() -> None:
            subprocess.run(command, env=env, cwd=REPO, check=True, capture_output=True)

        wall, _ = best_of(runs, check_config)
        print(f"check-config, {path.stat().st_size:,} bytes: {wall:.2f} s (best of {runs})")
        text = path.read_text()
        took, document = best_of(runs, lambda: read_yaml(text, str(path)))
        print(f"  YAML           {took * 1000:7.0f} ms")
        took, substituted = best_of(runs, lambda: substitute_env(document.data, env))
        print(f"  ${{NAME}}        {took * 1000:7.0f} ms")
        data, touched = substituted.data, substituted.touched
        took, found = best_of(runs, lambda: _config_validators().problems(data, touched, TABLE))
        print(f"  schema         {took * 1000:7.0f} ms")
        problems: list[Any] = []
        took, _ = best_of(runs, lambda: TABLE.root.check((), data, problems))
        print(f"  kinds, rules   {took * 1000:7.0f} ms")
        assert not found and not problems, (found + problems)[:3]
        took, _ = best_of(runs, lambda: TABLE.root.build(data))
        print(f"  build          {took * 1000:7.0f} ms")


if __name__ == "__main__":
    main()
