"""Score every response of the mini RewardBench set once per model and rendering; save per-row log-probs.

    python benchmarks/dump_mini_logprobs.py --out benchmarks/results/mini_logprobs.jsonl

Writes one JSON line per (row, response) with the strong model's log-prob (own template) and the weak
model's log-prob under both renderings ('own': plain format; 'shared': the strong model's ChatML text),
each with its token count. ``benchmarks/choose_defaults.py`` turns this into accuracy tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "reward_bench" / "mini.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--out", default=str(HERE / "results" / "mini_logprobs.jsonl"))
    ap.add_argument("--limit", type=int)
    args = ap.parse_args()

    from tqdm import tqdm

    from cdr import Conversation, DensityRatio

    rows = [json.loads(line) for line in open(args.data)][: args.limit]
    convs, keys = [], []
    for row in rows:
        for side in ("chosen", "rejected"):
            convs.append(Conversation.from_prompt_response(row["prompt"], row[side]))
            keys.append((row["subset"], str(row["id"]), side, len(row[side])))
    t0 = time.time()
    reward = DensityRatio(rendering="own")
    load_s = time.time() - t0
    timings = {"load_s": load_s}
    results = {}
    for label, scorer, renderer in [
        ("strong", reward.strong, reward.strong.renderer),
        ("weak_own", reward.weak, reward.weak.renderer),
        ("weak_shared", reward.weak, reward.strong.renderer),
    ]:
        t0 = time.time()
        with tqdm(total=len(convs), desc=label, unit="resp", file=sys.stderr) as bar:
            results[label] = scorer.logprobs(convs, renderer, include_eot=True, on_progress=bar.update)
        timings[label + "_s"] = time.time() - t0
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i, (subset, rid, side, chars) in enumerate(keys):
            rec = {"subset": subset, "id": rid, "side": side, "chars": chars}
            for label, lps in results.items():
                x = lps[i]
                rec[label] = (
                    None if isinstance(x, Exception) else {"sum": x.total, "n": x.n_tokens, "truncated": x.truncated}
                )
            f.write(json.dumps(rec) + "\n")
    print(
        json.dumps(
            {"responses": len(convs), **{k: round(v, 1) for k, v in timings.items()}, "provenance": reward.provenance}
        )
    )


if __name__ == "__main__":
    main()
