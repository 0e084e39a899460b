"""Do the CPU backends agree, and what do they cost? transformers vs llama.cpp on the same GGUF files.

    python benchmarks/backend_agreement.py                       # mini RewardBench set, embedded pair
    python benchmarks/backend_agreement.py --speed-responses 60  # the speed/memory part on 60 responses

Agreement (all 460 responses of the mini set): per-response summed log-probs of each model under each
backend (Pearson r), the single-model decisions (chosen > rejected) and the pair's decisions (mean_diff)
compared row by row. The transformers numbers come through the log-prob cache when present.
Speed and peak memory: each (model, backend) scores the same first N responses with the cache off, in its
own subprocess (peak RSS of that process), one after the other in this run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from proc_status import status_mib

HERE = Path(__file__).resolve().parent
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


def conversations(limit: int | None):
    from cdr.pipelines.evaluate import conversations as convs_of
    from cdr.pipelines.evaluate import load_rewardbench

    rows, _ = load_rewardbench("mini")
    rows = rows[:limit]
    return rows, [c for row in rows for c in convs_of(row)]


def model_logprobs(model: str, backend: str, convs, cache: str) -> tuple[list[float | None], list[int | None]]:
    from tqdm import tqdm

    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer, open_cache

    config = RewardConfig(cache=cache)
    scorer = ModelScorer(resolve_model(model), backend, config, open_cache(cache))
    with tqdm(total=len(convs), desc=f"{model} [{backend}]", unit="resp", file=sys.stderr) as bar:
        out = scorer.logprobs(convs, scorer.renderer, True, bar.update)
    return ([None if isinstance(x, Exception) else x.total for x in out],
            [None if isinstance(x, Exception) else x.n_tokens for x in out])


def speed_child(model: str, backend: str, n: int) -> None:
    """Runs in a subprocess: load, score n responses with the cache off, print one JSON line."""
    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer

    _, convs = conversations(None)
    convs = convs[:n]
    t0 = time.time()
    scorer = ModelScorer(resolve_model(model), backend, RewardConfig(cache="none"), None)
    load_s = time.time() - t0
    tokens = sum(len(scorer.span(c, scorer.renderer, True).token_ids) for c in convs)
    t0 = time.time()
    scorer.logprobs(convs, scorer.renderer, True)
    seconds = time.time() - t0
    peak = status_mib("VmHWM")
    print(json.dumps({"model": model, "backend": backend, "responses": n, "tokens": tokens, "load_s": load_s,
                      "seconds": seconds, "tokens_per_s": tokens / seconds, "peak_rss_mib": peak}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="only the first N rows of the mini set for the agreement part")
    ap.add_argument("--speed-responses", type=int, default=60)
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "backend_agreement.json"))
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "BACKEND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        speed_child(args.child[0], args.child[1], int(args.child[2]))
        return
    from cdr.reward import combine

    out = Path(args.out)
    report: dict = {"agreement": {}, "speed": []}
    if args.skip_agreement and out.exists():
        report["agreement"] = json.loads(out.read_text()).get("agreement", {})  # keep the last agreement run
    if not args.skip_agreement:
        rows, convs = conversations(args.limit)
        sums = {}
        for model in MODELS:
            for backend, cache in (("hf", "default"), ("llamacpp", "none")):
                sums[(model, backend)] = model_logprobs(model, backend, convs, cache)
            a, b = (np.array(sums[(model, be)][0], dtype=float) for be in ("hf", "llamacpp"))
            n = np.array(sums[(model, "hf")][1], dtype=float)
            ok = np.isfinite(a) & np.isfinite(b)
            decisions = [(a[2 * i] > a[2 * i + 1]) == (b[2 * i] > b[2 * i + 1]) for i in range(len(rows))]
            report["agreement"][model] = {
                "responses": int(ok.sum()), "pearson_r": float(np.corrcoef(a[ok], b[ok])[0, 1]),
                "mean_abs_diff_per_token": float(np.abs(a[ok] - b[ok]).sum() / n[ok].sum()),
                "single_model_decisions_agree": float(np.mean(decisions)),
            }

        def pair_rewards(backend):
            (s, sn), (w, wn) = sums[(MODELS[0], backend)], sums[(MODELS[1], backend)]
            return [combine("mean_diff", s[k], sn[k], w[k], wn[k]) for k in range(len(convs))]

        ra, rb = pair_rewards("hf"), pair_rewards("llamacpp")
        same = [(ra[2 * i] > ra[2 * i + 1]) == (rb[2 * i] > rb[2 * i + 1]) for i in range(len(rows))]
        report["agreement"]["pair_decisions_agree"] = float(np.mean(same))
        report["agreement"]["pair_reward_pearson_r"] = float(np.corrcoef(ra, rb)[0, 1])
        report["agreement"]["rows"] = len(rows)
    for model in MODELS:
        for backend in ("hf", "llamacpp"):
            proc = subprocess.run([sys.executable, __file__, "--child", model, backend, str(args.speed_responses)],
                                  capture_output=True, text=True, check=True)
            report["speed"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if report["agreement"]:
        g = report["agreement"]
        print(f"Agreement on {g['rows']} mini-set rows ({2 * g['rows']} responses):\n")
        print("| model | Pearson r (per-response log-prob) | mean abs diff, nats/token | single-model decisions agree |")
        print("|---|---|---|---|")
        for model in MODELS:
            m = g[model]
            print(f"| {model} | {m['pearson_r']:.5f} | {m['mean_abs_diff_per_token']:.4f} | {m['single_model_decisions_agree']:.1%} |")
        print(f"\npair (mean_diff) decisions agree on {g['pair_decisions_agree']:.1%} of rows; "
              f"pair reward Pearson r = {g['pair_reward_pearson_r']:.5f}\n")
    print(f"Speed and peak memory, first {args.speed_responses} responses, cache off, one process each:\n")
    print("| model | backend | tokens | seconds | tokens/s | load s | peak RSS MiB |\n|---|---|---|---|---|---|---|")
    for s in report["speed"]:
        print(f"| {s['model']} | {s['backend']} | {s['tokens']} | {s['seconds']:.1f} | {s['tokens_per_s']:.0f} | "
              f"{s['load_s']:.1f} | {s['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
