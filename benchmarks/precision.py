"""Precision per hardware (#26): float32 against int8 (and bfloat16) on the embedded pair, speed and agreement.

    python benchmarks/precision.py speed --responses 24 --bf16-responses 4   # per model, side by side
    python benchmarks/precision.py agreement --rows 230                      # int8 on the mini set (resumes)
    python benchmarks/precision.py report                                    # the tables, from both

speed: for each model of the embedded pair (SmolLM2-135M-Instruct with its chat template, gemma-3-270m with the
plain format: the default rendering `own`), --responses responses spread over the mini set (both responses of
every k-th row) become token-id requests once. The hf backend is loaded once per precision (load times apart)
and the requests are scored in slices of one row (its two responses), each slice by every engine in a rotating
order (A B C, B C A, ...), so the machine's load falls on all of them alike:
    float32   the hf backend as shipped (--dtype float32)
    int8      --dtype int8: the decoder's linear layers in dynamic int8, the LM head and log-softmax float32
    bfloat16  --dtype bfloat16, on the first --bf16-responses only (emulated on CPUs without bf16: slow)
    naive     the textbook full-softmax scorer in float32: model(input_ids).logits.log_softmax(-1) gathered at
              the response positions, on cdr's own token-budget batches (halved until the logits fit in
              --naive-logit-gib), no prompt sharing
Per-token |log-prob - float32's| for int8, bfloat16 and naive.

agreement: both models in int8 score every response of --rows rows (default rendering `own`, end of turn
included, as `cdr eval`), one row of each subset first, then a second, ..., so a partial run covers every subset;
a slice of rows at a time for both models, appended to a JSON-lines file per model, so an interrupted run resumes.
The float32 reference is benchmarks/results/mini_logprobs.jsonl (sums and token counts per response; the speed
part checks that those sums still come out of float32 today).

report: pair decisions (chosen > rejected under `mean_diff`) equal to float32's, with a Wilson 95% interval;
RewardBench accuracy on the same rows for both; per-response error of the sum; the speed table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "src" / "cdr" / "data" / "rewardbench_mini.jsonl"
RESULTS = HERE / "results"
REFERENCE = RESULTS / "mini_logprobs.jsonl"
MODELS = {"strong": "smollm2-135m-instruct", "weak": "gemma-3-270m"}
REF_FIELD = {"strong": "strong", "weak": "weak_own"}
STRIDE = 10  # rows per subset in the mini set


def machine() -> dict:
    from cdr.doctor import machine_facts

    facts = machine_facts()
    import torch

    return {
        "cpu_model": facts["cpu_model"],
        "logical_cpus": facts["logical_cpus"],
        "cpu_features": facts["cpu_features"],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "time_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def mini_rows() -> list[dict]:
    return [json.loads(line) for line in DATA.open()]


def conversations(rows):
    from cdr import Conversation

    convs, keys = [], []
    for row in rows:
        for side in ("chosen", "rejected"):
            convs.append(Conversation.from_prompt_response(row["prompt"], row[side]))
            keys.append((row["subset"], str(row["id"]), side))
    return convs, keys


def scorer(model: str, dtype: str, role: str):
    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer

    config = RewardConfig.from_flat(cache="none", dtype=dtype)
    return ModelScorer(resolve_model(model), "hf", config, None, role)


def naive_logprobs(backend, requests, logit_gib: float) -> list[np.ndarray]:
    """The full forward and a full-vocabulary log-softmax at every position, on cdr's batches (smaller where the
    logits would not fit in logit_gib), gathered at the response positions."""
    import torch

    out = []
    budget = backend.options.batch_tokens
    while budget * backend.vocab_size * 4 * 2 > logit_gib * 2**30 and budget > 256:  # logits and log-softmax
        budget //= 2
    naive_logprobs.batch_tokens = budget
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].token_ids))
    batches, result = [], {}
    for i in order:
        if batches and (len(batches[-1]) + 1) * len(requests[batches[-1][0]].token_ids) <= budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    with torch.inference_mode():
        for batch in batches:
            width = max(len(requests[i].token_ids) for i in batch)
            ids = torch.full((len(batch), width), backend.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                n = len(requests[i].token_ids)
                ids[b, :n], mask[b, :n] = torch.tensor(requests[i].token_ids), 1
            logp = backend.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
            for b, i in enumerate(batch):
                r = requests[i]
                target = torch.tensor(r.token_ids[r.response_start :])
                rows = logp[b, r.response_start - 1 : len(r.token_ids) - 1]
                result[i] = rows.gather(1, target[:, None])[:, 0].double().numpy()
            del logp
    out = [result[i] for i in range(len(requests))]
    return out


def speed(args) -> None:
    import torch

    from cdr.backends import LogprobRequest

    rows = mini_rows()
    step = max(1, len(rows) // max(1, args.responses // 2))
    picked = rows[::step][: max(1, args.responses // 2)]
    convs, keys = conversations(picked)
    reference = {(r["subset"], r["id"], r["side"]): r for r in map(json.loads, REFERENCE.open())}
    results = {"machine_before": machine(), "responses": len(convs), "row_step": step, "models": {}}
    for role, model in MODELS.items():
        if args.models and model not in args.models:
            continue
        print(f"{model}: loading", file=sys.stderr, flush=True)
        engines, load_s = {}, {}
        for dtype in ("float32", "int8", "bfloat16"):
            t0 = time.time()
            engines[dtype] = scorer(model, dtype, role)
            load_s[dtype] = time.time() - t0
        base = engines["float32"]
        spans = [base.span(c, base.renderer, True) for c in convs]
        requests = [LogprobRequest(s.token_ids, s.start) for s in spans]
        names = ["float32", "int8", "naive", "bfloat16"]
        if not args.naive:
            names.remove("naive")
        seconds = dict.fromkeys(names, 0.0)
        slice_seconds: dict[str, dict[int, float]] = {n: {} for n in names}
        tokens = dict.fromkeys(names, 0)
        done = dict.fromkeys(names, 0)
        logprobs: dict[str, list] = {n: [None] * len(requests) for n in names}
        naive_batch = None
        for s in range(0, len(requests), 2):
            part = requests[s : s + 2]
            active = [n for n in names if n != "bfloat16" or s < args.bf16_responses]
            k = (s // 2) % len(active)
            for name in active[k:] + active[:k]:  # a rotating order: A B C, B C A, C A B, ...
                t0 = time.perf_counter()
                if name == "naive":
                    got = naive_logprobs(base.backend, part, args.naive_logit_gib)
                    naive_batch = naive_logprobs.batch_tokens
                else:
                    got = engines[name].backend.response_logprobs(part)
                slice_seconds[name][s] = time.perf_counter() - t0
                seconds[name] += slice_seconds[name][s]
                tokens[name] += sum(len(r.token_ids) for r in part)
                done[name] += len(part)
                logprobs[name][s : s + 2] = got
            print(f"  {s + len(part)}/{len(requests)} responses", file=sys.stderr, flush=True)
        exact = logprobs["float32"]
        per_engine = {}
        for name in names:
            same = [i for i in range(len(requests)) if logprobs[name][i] is not None]
            got, ref = [logprobs[name][i] for i in same], [exact[i] for i in same]
            diffs = np.concatenate([g - e for g, e in zip(got, ref)])
            # float32's time on the very same slices: the ratio of times is the ratio of speeds
            f32_s = sum(slice_seconds["float32"][k] for k in slice_seconds[name])
            per_engine[name] = {
                "responses": done[name],
                "tokens": tokens[name],
                "response_tokens": int(sum(len(g) for g in got)),
                "seconds": round(seconds[name], 2),
                "tokens_per_s": round(tokens[name] / seconds[name], 1),
                "load_s": round(load_s.get(name, load_s["float32"]), 2),
                "mean_abs_err": float(np.abs(diffs).mean()),
                "max_abs_err": float(np.abs(diffs).max()),
                "worst_response_mean_abs_err": max(float(np.abs(g - e).mean()) for g, e in zip(got, ref)),
                "speed_vs_float32": round(f32_s / seconds[name], 2),
            }
        # the stored float32 sums still come out of float32 today
        stored = [reference[k][REF_FIELD[role]]["sum"] for k in keys]
        drift = max(abs(float(e.sum()) - r) for e, r in zip(exact, stored))
        results["models"][model] = {
            "engines": per_engine,
            "naive_batch_tokens": naive_batch,
            "cdr_batch_tokens": base.backend.options.batch_tokens,
            "int8_layers": engines["int8"].backend.int8_layers,
            "stored_float32_sums_max_abs_diff": drift,
            "threads": torch.get_num_threads(),
        }
        print(json.dumps(results["models"][model], indent=1), file=sys.stderr, flush=True)
        del engines, base
    results["machine_after"] = machine()
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old["speed"] = results
    out.write_text(json.dumps(old, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


def agreement(args) -> None:
    from cdr import DensityRatio

    rows = mini_rows()
    # one row of every subset first (rows 0, 10, 20, ...; then 1, 11, 21, ...): a partial run covers every subset
    rows = [rows[i] for offset in range(STRIDE) for i in range(offset, len(rows), STRIDE)][: args.rows]
    convs, keys = conversations(rows)
    models = {role: m for role, m in MODELS.items() if not args.models or m in args.models}
    files = {role: Path(args.dir) / f"{args.dtype}_{model}.jsonl" for role, model in models.items()}
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    have = {
        role: {tuple(json.loads(line)["key"]) for line in f.open()} if f.exists() else set()
        for role, f in files.items()
    }
    t0 = time.time()
    if args.rows_done_by:  # only the rows another file already holds (a float32 reference for int8's rows)
        done = {tuple(json.loads(line)["key"]) for line in Path(args.rows_done_by).open()}
        keep = [i for i, k in enumerate(keys) if k in done]
        convs, keys = [convs[i] for i in keep], [keys[i] for i in keep]
    reward = DensityRatio(dtype=args.dtype, cache="none", rendering="own")
    print(f"loaded in {time.time() - t0:.1f} s; {reward.provenance['strong_precision']}", file=sys.stderr)
    timing_path = Path(args.dir) / f"{args.dtype}_timing.jsonl"
    for s in range(0, len(convs), 2 * args.slice_rows):
        part, part_keys = convs[s : s + 2 * args.slice_rows], keys[s : s + 2 * args.slice_rows]
        for role, side in (("strong", reward.strong), ("weak", reward.weak)):
            if role not in files:
                continue
            todo = [i for i, k in enumerate(part_keys) if k not in have[role]]
            if not todo:
                continue
            t1 = time.perf_counter()
            got = side.logprobs([part[i] for i in todo], side.renderer, include_eot=True)
            seconds = time.perf_counter() - t1
            with files[role].open("a") as f:
                for i, lp in zip(todo, got):
                    rec = {"key": part_keys[i], "sum": float(lp.logprobs.sum()), "n": len(lp.logprobs)}
                    rec["truncated"] = bool(lp.truncated)
                    f.write(json.dumps(rec) + "\n")
                    have[role].add(part_keys[i])
            with timing_path.open("a") as f:
                tokens = sum(len(lp.token_ids) for lp in got)
                f.write(
                    json.dumps(
                        {
                            "role": role,
                            "responses": len(todo),
                            "response_tokens": tokens,
                            "seconds": seconds,
                            "load": os.getloadavg()[0],
                        }
                    )
                    + "\n"
                )
        print(f"  rows {min(len(rows), (s // 2) + args.slice_rows)}/{len(rows)}", file=sys.stderr, flush=True)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def report(args) -> None:
    from cdr.reward import combine
    from cdr.rewardbench import score, section_scores, subset_accuracy

    reference = {(r["subset"], r["id"], r["side"]): r for r in map(json.loads, REFERENCE.open())}
    for role, model in MODELS.items():  # a float32 reference computed in this environment replaces the stored one
        path = Path(args.dir) / f"float32_{model}.jsonl"
        if path.exists():
            for r in map(json.loads, path.open()):
                key = tuple(r["key"])
                stored = reference[key][REF_FIELD[role]]
                reference[key] = {**reference[key], REF_FIELD[role]: r, f"stored_{role}": stored}
    int8 = {}
    for role, model in MODELS.items():
        path = Path(args.dir) / f"int8_{model}.jsonl"
        int8[role] = {tuple(r["key"]): r for r in map(json.loads, path.open())} if path.exists() else {}
    rows = [
        r
        for r in mini_rows()
        if all((r["subset"], str(r["id"]), s) in int8[x] for s in ("chosen", "rejected") for x in MODELS)
    ]
    same, right_f32, right_int8, single_same = 0, [], [], {"strong": 0, "weak": 0}
    errs = {"strong": [], "weak": []}
    for row in rows:
        rew = {}
        for source in ("float32", "int8"):
            for side in ("chosen", "rejected"):
                key = (row["subset"], str(row["id"]), side)
                if source == "float32":
                    s, w = reference[key]["strong"], reference[key]["weak_own"]
                else:
                    s, w = int8["strong"][key], int8["weak"][key]
                    for role, ref in (("strong", reference[key]["strong"]), ("weak", reference[key]["weak_own"])):
                        got = int8[role][key]
                        assert got["n"] == ref["n"], (key, role, got["n"], ref["n"])
                        errs[role].append(abs(got["sum"] - ref["sum"]) / ref["n"])
                rew[source, side] = combine("mean_diff", s["sum"], s["n"], w["sum"], w["n"])
        f32 = rew["float32", "chosen"] > rew["float32", "rejected"]
        q8 = rew["int8", "chosen"] > rew["int8", "rejected"]
        same += f32 == q8
        right_f32.append((row["subset"], f32))
        right_int8.append((row["subset"], q8))
        for role, field in (("strong", "strong"), ("weak", "weak_own")):
            k = [(row["subset"], str(row["id"]), s) for s in ("chosen", "rejected")]
            a = (
                reference[k[0]][field]["sum"] / reference[k[0]][field]["n"]
                > reference[k[1]][field]["sum"] / reference[k[1]][field]["n"]
            )
            b = int8[role][k[0]]["sum"] / int8[role][k[0]]["n"] > int8[role][k[1]]["sum"] / int8[role][k[1]]["n"]
            single_same[role] += a == b
    n = len(rows)
    lo, hi = wilson(same, n)
    drift = {}  # the stored float32 sums against the ones recomputed here, where recomputed
    for role in MODELS:
        d = [
            abs(reference[k][REF_FIELD[role]]["sum"] - reference[k][f"stored_{role}"]["sum"])
            / reference[k][f"stored_{role}"]["n"]
            for k in reference
            if f"stored_{role}" in reference[k]
        ]
        if d:
            drift[role] = {"responses": len(d), "mean": float(np.mean(d)), "max": float(np.max(d))}
    summary = {
        "rows": n,
        "pair_decisions_equal": same,
        "agreement": same / n if n else None,
        "wilson95": [lo, hi],
        "single_model_mean_decisions_equal": single_same,
        "accuracy_float32": score(section_scores(subset_accuracy(right_f32))) if n else None,
        "accuracy_int8": score(section_scores(subset_accuracy(right_int8))) if n else None,
        "float32_recomputed_vs_stored_per_token": drift,
        "per_response_mean_err": {
            role: {"mean": float(np.mean(v)), "max": float(np.max(v))} for role, v in errs.items() if v
        },
    }
    timing = Path(args.dir) / "int8_timing.jsonl"
    if timing.exists():
        t = [json.loads(line) for line in timing.open()]
        summary["agreement_run"] = {
            role: {
                "responses": sum(x["responses"] for x in t if x["role"] == role),
                "seconds": round(sum(x["seconds"] for x in t if x["role"] == role), 1),
                "load_range": [min(x["load"] for x in t), max(x["load"] for x in t)],
            }
            for role in MODELS
        }
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.exists() else {}
    data["agreement"] = summary
    out.write_text(json.dumps(data, indent=1) + "\n")
    print(
        f"int8 vs float32 on {n} rows: pair decisions (mean_diff) equal {same}/{n} = {100 * same / max(n, 1):.1f}% "
        f"(Wilson 95% [{100 * lo:.1f}%, {100 * hi:.1f}%]); "
        f"RewardBench score float32 {summary['accuracy_float32']:.3f}, int8 {summary['accuracy_int8']:.3f}; "
        f"single-model mean decisions equal: strong {single_same['strong']}, "
        f"weak {single_same['weak']}"
    )
    for role, e in drift.items():
        print(
            f"  {MODELS[role]}: float32 recomputed here vs stored, |sum diff| / tokens: mean {e['mean']:.2e}, "
            f"max {e['max']:.2e} ({e['responses']} responses)"
        )
    for role, e in summary["per_response_mean_err"].items():
        print(
            f"  {MODELS[role]}: |sum error| / tokens per response: mean {e['mean']:.2e}, max {e['max']:.2e} nats/token"
        )
    for model, m in data.get("speed", {}).get("models", {}).items():
        print(
            f"\n{model} (naive batch tokens {m['naive_batch_tokens']}, cdr {m['cdr_batch_tokens']}; "
            f"stored float32 sums reproduced to {m['stored_float32_sums_max_abs_diff']:.1e} nats)"
        )
        print("| engine | responses | tokens | seconds | tokens/s | vs float32 | load s | mean abs err | max abs err |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, e in m["engines"].items():
            print(
                f"| {name} | {e['responses']} | {e['tokens']} | {e['seconds']} | {e['tokens_per_s']} | "
                f"{e['speed_vs_float32']}x | {e['load_s']} | {e['mean_abs_err']:.1e} | {e['max_abs_err']:.1e} |"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=("speed", "agreement", "report"))
    ap.add_argument("--responses", type=int, default=24, help="speed: responses (both of every k-th row)")
    ap.add_argument("--bf16-responses", type=int, default=4, help="speed: of those, how many bfloat16 scores too")
    ap.add_argument("--no-naive", dest="naive", action="store_false", help="speed: leave out the naive scorer")
    ap.add_argument("--naive-logit-gib", type=float, default=3.0, help="speed: the naive scorer's logits at most")
    ap.add_argument("--models", nargs="*", help="speed: only these models")
    ap.add_argument("--rows", type=int, default=230, help="agreement: ROWS rows of the mini set, one per subset first")
    ap.add_argument("--dtype", default="int8", help="agreement: the precision to score (float32: a reference)")
    ap.add_argument("--rows-done-by", help="agreement: only the rows this JSON-lines file of another run holds")
    ap.add_argument("--slice-rows", type=int, default=23, help="agreement: rows per slice (both models)")
    ap.add_argument("--dir", default=str(RESULTS / "precision"), help="agreement: per-model int8 log-prob files")
    ap.add_argument("--out", default=str(RESULTS / "precision.json"))
    args = ap.parse_args()
    {"speed": speed, "agreement": agreement, "report": report}[args.part](args)


if __name__ == "__main__":
    main()
