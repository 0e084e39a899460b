"""Accuracy of every rendering x variant (and the single-model and length baselines) on the mini set.

    python benchmarks/dump_mini_logprobs.py      # scores each response once per model and rendering
    python benchmarks/choose_defaults.py         # this table, from those log-probs
    python benchmarks/choose_defaults.py --compare benchmarks/results/mini_logprobs.tokenizer-v1.jsonl
                                                 # and each method minus itself under other log-probs

RewardBench protocol (ties are wrong, official section weights), 95% bootstrap intervals resampling
rows within each subset. The mini set has 10 rows per subset (230 rows), so intervals are wide.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from cdr.reward import combine
from cdr.rewardbench import SECTIONS, bootstrap, paired_bootstrap, score, section_scores, subset_accuracy

HERE = Path(__file__).resolve().parent


def load(path: Path) -> dict[tuple[str, str], dict[str, dict]]:
    pairs: dict[tuple[str, str], dict[str, dict]] = defaultdict(dict)
    for line in open(path):
        rec = json.loads(line)
        pairs[(rec["subset"], rec["id"])][rec["side"]] = rec
    return pairs


def rewards(rec: dict) -> dict[str, float | None]:
    s = rec["strong"]
    out: dict[str, float | None] = {}
    for rendering in ("own", "shared"):
        w = rec[f"weak_{rendering}"]
        for variant in ("sum", "mean", "mean_diff"):
            out[f"ratio {variant} ({rendering})"] = (
                None if s is None or w is None else combine(variant, s["sum"], s["n"], w["sum"], w["n"])
            )
    out["strong alone, sum"] = s and s["sum"]
    out["strong alone, mean"] = s and s["sum"] / s["n"]
    w = rec["weak_own"]
    out["weak alone, sum"] = w and w["sum"]
    out["weak alone, mean"] = w and w["sum"] / w["n"]
    out["longer response"] = rec["chars"]
    out["shorter response"] = -rec["chars"]
    return out


def correctness(path: Path) -> tuple[dict[str, list[tuple[str, bool]]], int, int]:
    """(subset, correct) per row for every method, in file order; the count of unscorable rows; rows."""
    pairs = load(path)
    rows_by_method: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    unscorable = 0
    for (subset, _), sides in pairs.items():
        rc, rr = rewards(sides["chosen"]), rewards(sides["rejected"])
        for method in rc:
            if rc[method] is None or rr[method] is None:
                unscorable += method == "ratio mean (own)"
                correct = False  # an unscorable pair counts as wrong, as a tie does
            else:
                correct = rc[method] > rr[method]
            rows_by_method[method].append((subset, correct))
    return rows_by_method, unscorable, len(pairs)


def compare(rows_by_method: dict[str, list[tuple[str, bool]]], other: Path, n: int) -> None:
    before, _, _ = correctness(other)
    print(f"\n| method: this minus {other.name}, paired | " + " | ".join(SECTIONS) + " | score (95% CI) |")
    print("|" + "---|" * (len(SECTIONS) + 2))
    for method, rows in rows_by_method.items():
        d = paired_bootstrap(rows, before[method], n=n)
        cells = [f"{d[s][0]:+.3f} [{d[s][1]:+.2f}, {d[s][2]:+.2f}]" for s in SECTIONS]
        print(
            f"| {method} | "
            + " | ".join(cells)
            + f" | **{d['score'][0]:+.3f}** [{d['score'][1]:+.3f}, {d['score'][2]:+.3f}] |"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logprobs", default=str(HERE / "results" / "mini_logprobs.jsonl"))
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--compare", help="another log-prob file of the same responses: print this minus that, paired")
    args = ap.parse_args()
    rows_by_method, unscorable, n_pairs = correctness(Path(args.logprobs))
    header = "| method | " + " | ".join(SECTIONS) + " | score (95% CI) |"
    print(f"{n_pairs} pairs, {unscorable} unscorable\n")
    print(header)
    print("|" + "---|" * (len(SECTIONS) + 2))
    for method, rows in rows_by_method.items():
        sec = section_scores(subset_accuracy(rows))
        ci = bootstrap(rows, n=args.bootstrap)
        cells = [f"{sec[s]:.3f} [{ci[s][0]:.2f}, {ci[s][1]:.2f}]" for s in SECTIONS]
        print(
            f"| {method} | "
            + " | ".join(cells)
            + f" | **{score(sec):.3f}** [{ci['score'][0]:.3f}, {ci['score'][1]:.3f}] |"
        )
    if args.compare:
        compare(rows_by_method, Path(args.compare), args.bootstrap)


if __name__ == "__main__":
    main()
