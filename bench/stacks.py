"""Summarise a py-spy collapsed-stack file (`py-spy record -f raw`): share of samples by the
innermost frame ("self") and by any frame on the stack ("total"), as pyinstrument or perf would.

    python bench/stacks.py FILE [--top 25] [--match ike/]
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("file")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--match", default="", help="only frames whose text contains this (total view)")
    a = p.parse_args()
    self_c: Counter[str] = Counter()
    total_c: Counter[str] = Counter()
    n = 0
    with open(a.file) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            k = int(count)
            n += k
            frames = stack.split(";")
            self_c[frames[-1]] += k
            for fr in set(frames):
                if a.match in fr:
                    total_c[fr] += k
    if not n:
        print("no samples")
        return 1
    print(f"{n} samples\n-- self (innermost frame) --")
    for fr, k in self_c.most_common(a.top):
        print(f"{100 * k / n:5.1f}%  {fr}")
    print("-- total (frame anywhere on the stack) --")
    for fr, k in total_c.most_common(a.top):
        print(f"{100 * k / n:5.1f}%  {fr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
