"""Summarise a py-spy raw profile: on-CPU share per thread, per function (self), per frame
(inclusive). Run: ``python benchmarks/top.py PROFILE``."""

from __future__ import annotations

import collections
import sys


def main(path: str) -> None:
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    with open(path) as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            threads[frames[0]] += n
            own[frames[-1]] += n
            for frame in set(frames[1:]):
                inclusive[frame] += n
    print(f"{total} samples")
    for title, table, rows in (
        ("threads", threads, 8),
        ("self", own, 25),
        ("inclusive", inclusive, 45),
    ):
        print(f"--- {title}")
        for name, n in table.most_common(rows):
            print(f"{100 * n / total:5.1f}%  {name[:110]}")


if __name__ == "__main__":
    main(sys.argv[1])
