"""Delta log: what appending one catalogue delta costs as a version's log grows (``write_delta``: the delta's file,
its fsync, the listing that finds the next generation and checks the log has no gap, the record and its link), and
what ``published_generation`` costs read from the start.

A live feed of small deltas (one changed candidate each) makes thousands of deltas before the republish that
docs/DEPLOY.md asks for at +10% of the catalogue; each write lists the whole log.

    python -m bench.delta_log [--quick] [--out FILE]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import git_commit, machine_info, write_json
from model_registry.deltas import Delta, published_generation, write_delta

SIZES = (1_000, 5_000, 10_000)  # deltas in the log when the costs are read
QUICK_SIZES = (50, 100)
TIMED = 50  # writes timed at each size (and reads of the generation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a log of 100 deltas (smoke test)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = QUICK_SIZES if args.quick else SIZES
    vector = np.ones((1, 32), np.float32)
    results: dict = {"commit": git_commit(), "machine": machine_info(), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="bench-delta-log-") as tmp:
        model_dir, written = Path(tmp), 0
        for size in sizes:
            while written < size - TIMED:
                written = write_delta(model_dir, 1, Delta.make([f"c{written}"], vector))
            writes = []
            while written < size:
                start = time.perf_counter()
                written = write_delta(model_dir, 1, Delta.make([f"c{written}"], vector))
                writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(TIMED):
                published_generation(model_dir, 1)
            read_s = (time.perf_counter() - start) / TIMED
            results["sizes"][str(size)] = {"write_ms_median": round(float(np.median(writes)) * 1e3, 3),
                                           "write_ms_p90": round(float(np.percentile(writes, 90)) * 1e3, 3),
                                           "published_generation_ms": round(read_s * 1e3, 3)}
    text = write_json(results, args.out)
    if not args.out:
        print(text)


if __name__ == "__main__":
    main()
