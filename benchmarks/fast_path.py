"""What converting one native hit line costs, step by step, on the exact path
(orjson -> jsonschema_rs -> map_hit -> orjson) and the fast path (msgspec typed decode
-> map_hit_line -> msgspec encode), in one process on the same lines (issue 11, item 3).

``python benchmarks/fast_path.py [N]`` prints microseconds per event for decode+validate,
map, encode and the whole, best of five alternating rounds, for N realistic lines (100,000).
"""

from __future__ import annotations

import gc
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lines import realistic_hit_line

from agent.formats import MappingContext
from agent.formats.native import NativeFormat, map_hit
from agent.formats.native_fast import _decode, encode_into, fast_hit, map_hit_line


def timed_us(step: Callable[[], Any], count: int) -> float:
    """CPU microseconds per line of one run of ``step`` (which handles all ``count`` lines)."""
    start = time.process_time()
    step()
    return (time.process_time() - start) / count * 1e6


def main(count: int) -> None:
    rng = random.Random(11)
    lines = [realistic_hit_line(n, rng) for n in range(count)]
    ctx = MappingContext()
    native = NativeFormat()
    validator = native._validators["hit"]
    loads, dumps, opt = orjson.loads, orjson.dumps, orjson.OPT_APPEND_NEWLINE
    objs = [loads(line) for line in lines]
    typed = [_decode(line) for line in lines]
    notes = [map_hit(obj, ctx) for obj in objs]
    fast_notes = [map_hit_line(hit) for hit in typed]
    written = bytearray()
    for fast_note in fast_notes:
        encode_into(fast_note, written, -1)
        written.append(10)
    assert bytes(written) == b"".join(dumps(note, option=opt) for note in notes)

    def old_decode() -> None:
        for line in lines:
            validator.is_valid(loads(line))

    def old_map() -> None:
        for obj in objs:
            map_hit(obj, ctx)

    def old_encode() -> None:
        body = bytearray()
        for note in notes:
            body += dumps(note, option=opt)

    def new_encode() -> None:
        body = bytearray()
        for note in fast_notes:
            encode_into(note, body, -1)
            body.append(10)

    def old_whole() -> None:
        convert = native.convert
        body = bytearray()
        for line in lines:
            body += dumps(convert(loads(line), ctx)[1], option=opt)

    def new_decode() -> None:
        for line in lines:
            _decode(line)

    def new_map() -> None:
        for hit in typed:
            map_hit_line(hit)

    def new_whole() -> None:
        body = bytearray()
        for line in lines:
            encode_into(fast_hit(line), body, -1)
            body.append(10)

    # The inputs held for the steps (a million objects) are not what the agent holds:
    # frozen, the collector no longer walks them on every collection.
    gc.collect()
    gc.freeze()
    steps = {
        "decode+validate": (old_decode, new_decode),
        "map": (old_map, new_map),
        "encode": (old_encode, new_encode),
        "whole": (old_whole, new_whole),
    }
    # The machine is shared: the two paths alternate, and each keeps its best of five.
    best = {name: [float("inf"), float("inf")] for name in steps}
    for _ in range(5):
        for name, pair in steps.items():
            for which, step in enumerate(pair):
                best[name][which] = min(best[name][which], timed_us(step, count))
    rows = [(name, old, new) for name, (old, new) in best.items()]
    print(f"{count} lines, {sum(map(len, lines)) / count:.0f} bytes a line; µs per event")
    print(f"{'step':<16} {'exact path':>10} {'fast path':>10}")
    for name, old, new in rows:
        print(f"{name:<16} {old:>10.2f} {new:>10.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
