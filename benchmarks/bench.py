"""Run `mmbert bench` one workload per process (each fits a 10-minute shell command).

    python benchmarks/bench.py --out runs/bench            # all four workloads, fp32 + bf16
    python benchmarks/bench.py --out runs/bench --quick    # smoke test, ~1-2 minutes
    python benchmarks/bench.py --workload train --runs 2   # one workload

Extra arguments go to `mmbert bench` unchanged. Results accumulate in OUT/results.json; the
table (OUT/results.md) and chart (OUT/bench.png) are re-rendered after every workload.
"""

import argparse
import subprocess
import sys

WORKLOADS = ["fixed", "mixed", "long", "train"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=WORKLOADS)
    args, rest = ap.parse_known_args()
    for w in args.workload:
        cmd = [sys.executable, "-m", "mmbert.cli", "bench", "--workload", w, *rest]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
