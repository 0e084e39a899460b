"""Accuracy of every rendering x variant (and the single-model and length baselines) on the mini set.

    python benchmarks/dump_mini_logprobs.py      # scores each response once per model and rendering
    python benchmarks/choose_defaults.py         # this table, from those log-probs

RewardBench protocol (ties are wrong, official section weights), 95% bootstrap intervals resampling
rows within each subset. The mini set has 10 rows per subset (230 rows), so intervals are wide.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from cdr.reward import combine
from cdr.rewardbench import SECTIONS, bootstrap, score, section_scores, subset_accuracy

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
            out[f"ratio {variant} ({rendering})"] = None if s is None or w is None else combine(variant, s["sum"], s["n"], w["sum"], w["n"])
    out["strong alone, sum"] = s and s["sum"]
    out["strong alone, mean"] = s and s["sum"] / s["n"]
    w = rec["weak_own"]
    out["weak alone, sum"] = w and w["sum"]
    out["weak alone, mean"] = w and w["sum"] / w["n"]
    out["longer response"] = rec["chars"]
    out["shorter response"] = -rec["chars"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--logprobs", default=str(HERE / "results" / "mini_logprobs.jsonl"))
    ap.add_argument("--bootstrap", type=int, default=2000)
    args = ap.parse_args()
    pairs = load(Path(args.logprobs))
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
    header = "| method | " + " | ".join(SECTIONS) + " | score (95% CI) |"
    print(f"{len(pairs)} pairs, {unscorable} unscorable\n")
    print(header)
    print("|" + "---|" * (len(SECTIONS) + 2))
    for method, rows in rows_by_method.items():
        sec = section_scores(subset_accuracy(rows))
        ci = bootstrap(rows, n=args.bootstrap)
        cells = [f"{sec[s]:.3f} [{ci[s][0]:.2f}, {ci[s][1]:.2f}]" for s in SECTIONS]
        print(f"| {method} | " + " | ".join(cells) + f" | **{score(sec):.3f}** [{ci['score'][0]:.3f}, {ci['score'][1]:.3f}] |")


if __name__ == "__main__":
    main()
