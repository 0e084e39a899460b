"""Time RewardBench 2's bootstrap (``cdr.rewardbench2.summarize``) now and at an earlier commit, side by side.

    python benchmarks/rb2_bootstrap_speed.py [--before 943546c~2] [--resamples 1000]

The earlier module is read with ``git show REV:src/cdr/rewardbench2.py`` and imported beside the current one;
both get the same random rows (350 per best-of-4 subset, 50 Ties prompt ids) and must give equal figures.
Prints a table: seconds per ``summarize`` call (one variant) for each version and the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cdr import rewardbench2 as current

ROOT = Path(__file__).resolve().parent.parent


def load_at(rev: str):
    text = subprocess.run(
        ["git", "show", f"{rev}:src/cdr/rewardbench2.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "rewardbench2_before.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("rewardbench2_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def rows(module, seed: int = 0):
    rng = np.random.default_rng(seed)
    out = [module.Row(s, str(i), tuple(rng.random(4).tolist()), 1) for s in module.SUBSETS[:-1] for i in range(350)]
    out += [
        module.Row("Ties", f"{k}:{i}", tuple(rng.random(5).tolist()), 2) for i in range(50) for k in ("ref", "tied")
    ]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="943546c~2", help="the commit to compare with (default: before the change)")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    before = load_at(args.before)
    timings, results = {}, {}
    for name, module in (("before", before), ("now", current), ("before", before), ("now", current)):
        data = rows(module)
        start = time.perf_counter()
        results[name] = module.summarize(data, args.resamples)
        timings.setdefault(name, []).append(time.perf_counter() - start)
    assert results["before"] == results["now"], "the two versions give different figures"
    best = {name: min(t) for name, t in timings.items()}
    print(f"{len(rows(current))} rows, {args.resamples} resamples, best of 2 alternating runs; figures equal")
    print("| version | seconds per summarize | ratio |\n|---|---|---|")
    for name in ("before", "now"):
        label = args.before if name == "before" else "HEAD"
        print(f"| {name} ({label}) | {best[name]:.2f} | {best['before'] / best[name]:.1f}x |")


if __name__ == "__main__":
    main()
