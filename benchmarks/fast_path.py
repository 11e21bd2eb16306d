"""What converting one native hit line costs, step by step, on the exact path
(orjson -> jsonschema_rs -> map_hit -> orjson) and the fast path (msgspec typed decode
-> map_hit_line -> orjson), in one process on the same lines (issue 11, item 3).

``python benchmarks/fast_path.py [N]`` prints microseconds per event for decode+validate,
map, encode and the whole, best of three rounds, for N realistic lines (100,000).
"""

from __future__ import annotations

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
from agent.formats.native_fast import _decode, fast_hit, map_hit_line


def best_us(step: Callable[[], Any], count: int, rounds: int = 3) -> float:
    """Microseconds per line of ``step`` (which handles all ``count`` lines), best round."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


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
    assert [map_hit_line(hit) for hit in typed] == notes

    def old_decode() -> None:
        for line in lines:
            validator.is_valid(loads(line))

    def old_map() -> None:
        for obj in objs:
            map_hit(obj, ctx)

    def encode() -> None:
        for note in notes:
            dumps(note, option=opt)

    def old_whole() -> None:
        convert = native.convert
        for line in lines:
            dumps(convert(loads(line), ctx)[1], option=opt)

    def new_decode() -> None:
        for line in lines:
            _decode(line)

    def new_map() -> None:
        for hit in typed:
            map_hit_line(hit)

    def new_whole() -> None:
        for line in lines:
            dumps(fast_hit(line), option=opt)

    rows = (
        ("decode+validate", best_us(old_decode, count), best_us(new_decode, count)),
        ("map", best_us(old_map, count), best_us(new_map, count)),
        ("encode", best_us(encode, count), best_us(encode, count)),
        ("whole", best_us(old_whole, count), best_us(new_whole, count)),
    )
    print(f"{count} lines, {sum(map(len, lines)) / count:.0f} bytes a line; µs per event")
    print(f"{'step':<16} {'exact path':>10} {'fast path':>10}")
    for name, old, new in rows:
        print(f"{name:<16} {old:>10.2f} {new:>10.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)
