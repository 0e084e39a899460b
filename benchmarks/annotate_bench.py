"""``cdr annotate`` on real candidates, three times over one fresh log-prob cache.

    python benchmarks/make_alpaca_candidates.py      # 50 AlpacaEval prompts x (GPT-4 answer + 3 SmolLM2 samples)
    python benchmarks/annotate_bench.py

1. cold: every response scored by both models (one model pass per response and model);
2. the same command again into a new output: everything comes from the cache (output byte-identical);
3. a different weak model: the strong side comes from the cache, only the weak side is computed.
Prints a markdown table; the length report of run 1 is printed by cdr itself.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(args: list[str]) -> tuple[float, str, str]:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "cdr.cli", "annotate", *args, "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return time.time() - start, proc.stdout, proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", default=str(HERE / "results" / "alpaca_candidates.jsonl"))
    ap.add_argument(
        "--changed-weak",
        default="smollm2-135m-instruct",
        help="weak model for run 3 (any other model: only the cache behaviour is measured)",
    )
    args = ap.parse_args()
    n_rows = sum(1 for line in open(args.candidates) if line.strip())
    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/cache.sqlite"
        runs = [
            ("1. cold cache", ["-o", f"{tmp}/run1.jsonl"]),
            ("2. same command again", ["-o", f"{tmp}/run2.jsonl"]),
            (f"3. weak = {args.changed_weak}", ["-o", f"{tmp}/run3.jsonl", "--weak", args.changed_weak]),
        ]
        print("| run | wall s | model load s | rows/s (incl. load) | model passes reused | model passes computed |")
        print("|---|---|---|---|---|---|")
        outputs = []
        for label, extra in runs:
            wall, out, err = run([args.candidates, "--cache", cache, *extra])
            load = float(re.search(r"in ([\d.]+) s", err).group(1))
            reused, computed = map(int, re.search(r"log-prob cache: (\d+) reused, (\d+) computed", out).groups())
            print(f"| {label} | {wall:.1f} | {load:.1f} | {n_rows / wall:.2f} | {reused} | {computed} |")
            outputs.append(out)
        same = Path(f"{tmp}/run1.jsonl").read_bytes() == Path(f"{tmp}/run2.jsonl").read_bytes()
        print(f"\nrun 2 output byte-identical to run 1: {same}\n\nrun 1 summary:\n{outputs[0]}")


if __name__ == "__main__":
    main()
