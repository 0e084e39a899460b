"""How fast and lean is pair scoring? cdr's transformers backend against lm-evaluation-harness, llama.cpp and
itself in bf16, on the same token ids; prompt sharing on best-of-8; FLOP/s against this machine's matmul peak.

    python benchmarks/scoring_speed.py                         # every part, first 460 responses of the mini set
    python benchmarks/scoring_speed.py --responses 60          # a quicker cut
    python benchmarks/scoring_speed.py --parts matmul,bestof8  # some parts only

Parts:
- matmul: this machine's fp32 (and bf16) matmul throughput, torch on all cores, best of several 2048^3 products.
- engines: for each model of the embedded pair (SmolLM2 with its chat template, gemma with the plain format, as
  `cdr` renders them), the first --responses responses of the mini set become token-id requests once; each
  engine scores the same requests in a process of its own (peak RSS of that process, cache off):
    cdr        the hf backend as shipped (LM head on response positions only, tiled logsumexp, token-budget
               batches sorted by length, prompt sharing between a row's chosen and rejected);
    cdr-bf16   the same in bfloat16 (opt-in, --dtype bfloat16);
    lm-eval-bf16  lm-eval on the bfloat16 model (opt-in): the "same precision" comparison for cdr-bf16;
    cdr-compiled  the same with the decoder body through torch.compile(dynamic=True) (an experiment: the
               compile time on the first 8 responses is reported apart, not in the timed run);
    lm-eval    lm-evaluation-harness's HFLM._loglikelihood_tokens (the token-level core of HFLM.loglikelihood)
               on the same model object and the same token ids, --lm-eval-batch requests per batch;
    llamacpp   cdr's llama.cpp backend (one sequence at a time, eval + scores, own log-softmax) on the GGUF file.
  Scores are compared per token with lm-eval (a plain full-vocabulary log-softmax: the reference path).
  "Useful" FLOPs are those the scoring needs, whatever the engine: every linear layer at every position,
  attention over the causal context, and the LM head at the response positions only; FLOP/s is that over the
  engine's time, as a fraction of the fp32 matmul peak.
- pair: the whole default pair through the Python API (`DensityRatio.score`), the strong model then the weak one
  (each on all cores) against both at once (`overlap=True`, two threads, half the cores each); rewards per
  second with loading excluded and reported, and the same rewards required.
- head: gemma's LM head alone (random weights of its shape, 262,144 x 640, and --head-positions random hidden
  states): log p(target) the way cdr computed it before (chunks of 128 positions x the whole vocabulary) against
  tiles of positions x vocabulary slice of several sizes, the shipped one marked; GFLOP/s of each and equality.
- bestof8: SmolLM2, --bestof-prompts prompts each with the paper recipe's REASONING context (criteria and two
  exemplar blocks, about 400 tokens with the prompt) and 8 candidate responses; prompt sharing on against off,
  alternating,
  best of 2, the same scores required.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cdr.cpu import cpu_flags
from cdr.doctor import NATIVE_BF16_CPU_FEATURES
from proc_status import status_mib

HERE = Path(__file__).resolve().parent
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
ENGINES = ("cdr", "lm-eval", "llamacpp")  # and "cdr-bf16", "lm-eval-bf16", "cdr-compiled" on request (--engines)
# Each engine's time is compared with lm-eval's at the same precision.
LM_EVAL_AT = {"cdr-bf16": "lm-eval-bf16", "lm-eval-bf16": "lm-eval-bf16"}


def requests_for(scorer, n: int):
    """The first n responses of the mini set as the token-id requests cdr scores."""
    from cdr.backends import LogprobRequest
    from cdr.pipelines.evaluate import conversations, load_rewardbench

    rows, _ = load_rewardbench("mini", log=lambda _: None)
    convs = [c for row in rows for c in conversations(row)][:n]
    spans = [scorer.span(c, scorer.renderer, True) for c in convs]
    return [LogprobRequest(s.token_ids, s.start) for s in spans]


def useful_flops(model, requests) -> tuple[float, dict]:
    """Matmul FLOPs the scoring needs: linear layers at every position, causal attention, LM head on responses."""
    import torch

    config = model.config
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    linear = sum(
        m.weight.numel()
        for m in model.get_decoder().modules()
        if isinstance(m, torch.nn.Linear) and m.weight is not embed
    )
    layers = config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    window = getattr(config, "sliding_window", None)
    total = 0.0
    for r in requests:
        n = len(r.token_ids)
        total += 2 * linear * n
        total += 4 * layers * heads * head_dim * n * (n + 1) / 2  # QK^T and AV over the causal context (no window)
        total += 2 * head.shape[0] * head.shape[1] * (n - r.response_start)
    return total, {"linear_params": linear, "window_ignored": window}


def engine_child(model_name: str, engine: str, n: int, lm_eval_batch: int, out_path: str) -> None:
    """Runs in a subprocess: load, build the requests, score them once, write one JSON file."""
    import torch

    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer

    t0 = time.time()
    backend = "llamacpp" if engine == "llamacpp" else "hf"
    dtype = "bfloat16" if engine in ("cdr-bf16", "lm-eval-bf16") else "float32"
    scorer = ModelScorer(resolve_model(model_name), backend, RewardConfig.from_flat(cache="none", dtype=dtype), None)
    requests = requests_for(scorer, n)
    warmup_s = None
    if engine == "cdr-compiled":  # the decoder body through torch.compile (inductor); the first calls compile it
        scorer.backend.decoder = torch.compile(scorer.backend.decoder, dynamic=True)
        t1 = time.time()
        scorer.backend.response_logprobs(requests[:8])
        warmup_s = time.time() - t1
    if engine.startswith("lm-eval"):
        from lm_eval.models.huggingface import HFLM

        lm = HFLM(
            pretrained=scorer.backend.model,
            tokenizer=scorer.tokenizer,
            batch_size=lm_eval_batch,
            max_length=max(len(r.token_ids) for r in requests) + 1,
        )
        payload = [
            (("", ""), list(r.token_ids[: r.response_start]), list(r.token_ids[r.response_start :])) for r in requests
        ]
    load_s = time.time() - t0
    rss_loaded = status_mib("VmRSS")
    t0 = time.time()
    if engine.startswith("lm-eval"):
        totals = [ll for ll, _ in lm._loglikelihood_tokens(payload, disable_tqdm=True)]
    else:
        totals = [float(lp.sum()) for lp in scorer.backend.response_logprobs(requests)]
    seconds = time.time() - t0
    result = {
        "model": model_name,
        "engine": engine,
        "responses": len(requests),
        "tokens": sum(len(r.token_ids) for r in requests),
        "response_tokens": sum(len(r.token_ids) - r.response_start for r in requests),
        "lengths": [len(r.token_ids) - r.response_start for r in requests],
        "load_s": load_s,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "rss_loaded_mib": rss_loaded,
        "peak_rss_mib": status_mib("VmHWM"),
        "totals": totals,
        "warmup_s": warmup_s,
    }
    if engine in ("cdr", "lm-eval"):
        result["useful_flops"], result["flop_notes"] = useful_flops(scorer.backend.model, requests)
    if engine.startswith("lm-eval"):
        result["lm_eval_batch"] = lm_eval_batch
    else:
        result["batch_tokens"] = scorer.backend.options.batch_tokens
    Path(out_path).write_text(json.dumps(result))


def pair_child(mode: str, n: int, out_path: str) -> None:
    """Runs in a subprocess: the default pair through the Python API, strong then weak, or both at once."""
    from cdr import DensityRatio
    from cdr.pipelines.evaluate import conversations, load_rewardbench

    rows, _ = load_rewardbench("mini", log=lambda _: None)
    convs = [c for row in rows for c in conversations(row)][:n]
    t0 = time.time()
    reward = DensityRatio(cache="none", overlap=(mode == "overlap"))
    load_s = time.time() - t0
    t0 = time.time()
    rewards = [r.reward for r in reward.score(convs)]
    seconds = time.time() - t0
    Path(out_path).write_text(
        json.dumps(
            {
                "mode": mode,
                "responses": len(convs),
                "load_s": load_s,
                "seconds": seconds,
                "rewards_per_s": len(convs) / seconds,
                "threads": reward.config.strong_options.threads,
                "rewards": rewards,
                "peak_rss_mib": status_mib("VmHWM"),
            }
        )
    )


def run_pair(args) -> list[dict]:
    results = []
    tmp = Path(args.out).with_suffix(".child.json")
    for mode in ("sequential", "overlap"):
        print(f"  default pair [{mode}] ...", file=sys.stderr, flush=True)
        subprocess.run(
            [sys.executable, __file__, "--pair-child", mode, str(args.responses), str(tmp)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        results.append(json.loads(tmp.read_text()))
    tmp.unlink(missing_ok=True)
    return results


def matmul_peak(size: int = 2048, repeats: int = 8) -> dict:
    """fp32 at ``size`` (torch.mm); bf16 at 1024 through both torch.mm and F.linear, the call every nn.Linear
    makes: on a CPU without bf16 instructions the two take different kernels, and mm's is far slower."""
    import torch
    import torch.nn.functional as F

    out = {
        "threads": torch.get_num_threads(),
        "size": size,
        "cpu_bf16_instructions": any(f in (cpu_flags() or ()) for f in NATIVE_BF16_CPU_FEATURES),
    }
    cases = (
        ("float32", torch.float32, size, repeats, torch.mm),
        ("bfloat16", torch.bfloat16, 1024, 2, torch.mm),
        ("bfloat16_linear", torch.bfloat16, 1024, 3, F.linear),
        ("float32_linear", torch.float32, 1024, 3, F.linear),
    )
    for name, dtype, n, k, op in cases:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        op(a, b)
        best = min(_timed(lambda op=op, a=a, b=b: op(a, b)) for _ in range(k))
        out[name + "_gflops"] = 2 * n**3 / best / 1e9
    return out


def head_tiles(
    positions: int,
    tiles=(
        (128, 262144),
        (256, 4096),
        (512, 4096),
        (1024, 4096),
        (256, 2048),
        (512, 2048),
        (1024, 2048),
        (256, 1024),
        (512, 1024),
        (1024, 1024),
    ),
) -> dict:
    """gemma's head shape on random numbers: the old 128-position chunks against (positions x vocabulary) tiles."""
    import torch
    import torch.nn.functional as F

    from cdr.backends.hf import TILES, tiled_logsumexp

    vocab, hidden_size = 262144, 640
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(vocab, hidden_size, generator=generator) * 0.02
    hidden = torch.randn(positions, hidden_size, generator=generator)
    target = torch.randint(0, vocab, (positions,), generator=generator)

    def logit_tile(rows, start: int, stop: int):
        return F.linear(rows, weight[start:stop])

    def tiled(rows_per_tile: int, width: int):  # what the hf backend's _token_logprobs does, with this tile
        return (hidden * weight[target]).sum(-1) - tiled_logsumexp(hidden, logit_tile, vocab, (rows_per_tile, width))

    flops = 2 * positions * hidden_size * vocab
    out = {"positions": positions, "vocab": vocab, "hidden": hidden_size, "shipped": list(TILES["cpu"]), "tiles": []}
    with torch.inference_mode():
        reference = tiled(128, vocab)  # one slice = the whole vocabulary: the old chunking
        for rows_per_tile, width in tiles:
            tiled(rows_per_tile, width)
            best = min(_timed(lambda r=rows_per_tile, w=width: tiled(r, w)) for _ in range(2))
            diff = float((tiled(rows_per_tile, width) - reference).abs().max())
            out["tiles"].append(
                {
                    "positions": rows_per_tile,
                    "width": width,
                    "seconds": best,
                    "gflops": flops / best / 1e9,
                    "max_abs_diff": diff,
                }
            )
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bestof8(n_prompts: int, repeats: int = 2) -> dict:
    from cdr.backends import LogprobRequest
    from cdr.config import RewardConfig
    from cdr.conversation import Conversation
    from cdr.models import resolve_model
    from cdr.pipelines.evaluate import load_rewardbench
    from cdr.recipes import load_recipe
    from cdr.recipes.context import customize
    from cdr.reward import ModelScorer

    rows, _ = load_rewardbench("mini", log=lambda _: None)
    texts = [r[side] for r in rows for side in ("chosen", "rejected")]
    recipe = dataclasses.replace(load_recipe("paper"), exemplars=2)  # REASONING: criteria + 2 blocks, ~400 tokens
    scorer = ModelScorer(resolve_model(MODELS[0]), "hf", RewardConfig(cache="none"), None)
    requests, prompt_tokens = [], []
    for p in range(n_prompts):
        prompt = rows[p]["prompt"]
        for k in range(8):
            response = texts[(8 * p + k + 1) % len(texts)][:600]  # other rows' answers: realistic text, ~130 tokens
            conv = customize(recipe, Conversation.from_prompt_response(prompt, response), "REASONING").strong
            span = scorer.span(conv, scorer.renderer, True)
            requests.append(LogprobRequest(span.token_ids, span.start))
        prompt_tokens.append(span.start)
    backend = scorer.backend
    seconds: dict[str, list[float]] = {"shared": [], "unshared": []}
    scores = {}
    for _ in range(repeats):
        for name, sharing in (("shared", True), ("unshared", False)):
            backend.options.prompt_sharing = sharing
            t0 = time.perf_counter()
            scores[name] = backend.response_logprobs(requests)
            seconds[name].append(time.perf_counter() - t0)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(scores["shared"], scores["unshared"]))
    best = {k: min(v) for k, v in seconds.items()}
    return {
        "prompts": n_prompts,
        "responses": len(requests),
        "mean_prompt_tokens": float(np.mean(prompt_tokens)),
        "mean_response_tokens": float(np.mean([len(r.token_ids) - r.response_start for r in requests])),
        "seconds": seconds,
        "best_s": best,
        "speedup": best["unshared"] / best["shared"],
        "max_abs_diff_nats": diff,
    }


def run_engines(args) -> list[dict]:
    results = []
    tmp = Path(args.out).with_suffix(".child.json")
    for model in args.models.split(","):
        for engine in args.engines.split(","):
            if engine == "cdr-bf16" and model != MODELS[0] and args.bf16_models == "first":
                continue
            cmd = [
                sys.executable,
                __file__,
                "--child",
                model,
                engine,
                str(args.responses),
                str(args.lm_eval_batch),
                str(tmp),
            ]
            print(f"  {model} [{engine}] ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                why = (
                    f"killed by signal {-proc.returncode} (9: out of memory)"
                    if proc.returncode < 0
                    else proc.stderr.strip().splitlines()[-1]
                )
                results.append(
                    {
                        "model": model,
                        "engine": engine,
                        "error": why,
                        "lm_eval_batch": args.lm_eval_batch if engine.startswith("lm-eval") else None,
                    }
                )
                continue
            results.append(json.loads(tmp.read_text()))
            r = results[-1]
            print(
                f"    {r['seconds']:.1f} s, {r['tokens'] / r['seconds']:.0f} tokens/s, peak "
                f"{r['peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    tmp.unlink(missing_ok=True)
    return results


def engine_table(results: list[dict], peak: dict | None) -> list[str]:
    """One row per (model, engine): time against lm-eval at the same precision; score error against lm-eval in
    float32 (the exact reference); useful FLOP/s against the matmul peak of the engine's own precision."""
    lines = [
        "| model | engine | responses | tokens | seconds | tokens/s | time vs lm-eval (same precision) | "
        "peak RSS MiB | peak over loaded MiB | max abs diff vs lm-eval float32, nats/token (response mean) | "
        "useful FLOP/s, % of the matmul peak (same precision) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["model"], r["engine"]): r for r in results if "error" not in r}
    for r in results:
        if "error" in r:
            batch = f" (batch {r['lm_eval_batch']})" if r.get("lm_eval_batch") else ""
            lines.append(f"| {r['model']} | {r['engine']}{batch} | failed: {r['error'][:80]} |  |  |  |  |  |  |  |  |")
            continue
        ref = by.get((r["model"], LM_EVAL_AT.get(r["engine"], "lm-eval")))
        ratio = f"{r['seconds'] / ref['seconds']:.2f}x" if ref else "-"
        exact = by.get((r["model"], "lm-eval"))
        if exact:
            diffs = [abs(a - b) / n for a, b, n in zip(r["totals"], exact["totals"], r["lengths"])]
            diff_text = f"{max(diffs):.1e}"
        else:
            diff_text = "-"
        flops = by.get((r["model"], "cdr"), {}).get("useful_flops")
        if r["engine"].endswith("bf16"):  # bf16 F.linear's peak, from the matmul part of the stored report
            gflops = (peak or {}).get("bfloat16_linear_gflops")
        else:  # against the peak measured in the same command as this row when there is one (runs merge)
            gflops = r.get("matmul_gflops_same_run") or (peak or {}).get("float32_gflops")
        mfu = f"{100 * flops / r['seconds'] / (gflops * 1e9):.0f}%" if flops and gflops else "-"
        engine = f"{r['engine']} (batch {r['lm_eval_batch']})" if r["engine"].startswith("lm-eval") else r["engine"]
        lines.append(
            f"| {r['model']} | {engine} | {r['responses']} | {r['tokens']} | {r['seconds']:.1f} | "
            f"{r['tokens'] / r['seconds']:.0f} | {ratio} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_rss_mib'] - r['rss_loaded_mib']:.0f} | {diff_text} | {mfu} |"
        )
    return lines


def compiled_vs_eager(results: list[dict]) -> list[str]:
    """torch.compile'd decoder against the eager one (both cdr, fp32), where a run has both."""
    by = {(r["model"], r["engine"]): r for r in results if "error" not in r}
    lines = []
    for model in MODELS:
        eager, compiled = by.get((model, "cdr")), by.get((model, "cdr-compiled"))
        if not (eager and compiled) or eager["responses"] != compiled["responses"]:
            continue
        diff = max(abs(a - b) / n for a, b, n in zip(eager["totals"], compiled["totals"], eager["lengths"]))
        lines.append(
            f"- {model}: compiled {compiled['seconds']:.1f} s against eager {eager['seconds']:.1f} s "
            f"({compiled['seconds'] / eager['seconds']:.2f}x the time) after {compiled['warmup_s']:.1f} s of "
            f"compiling on 8 responses; max abs diff {diff:.1e} nats/token"
        )
    return lines


def bf16_agreement(results: list[dict]) -> list[str]:
    """bf16 against fp32 (both cdr), where a run has both: per-token difference and the decisions of each row's
    chosen (even index) against its rejected (odd index), per model and for the pair's mean_diff reward."""
    from cdr.reward import combine

    by = {(r["model"], r["engine"]): r for r in results if "error" not in r}
    lines, pair = [], {}
    for model in MODELS:
        fp32, bf16 = by.get((model, "cdr")), by.get((model, "cdr-bf16"))
        if not (fp32 and bf16) or fp32["responses"] != bf16["responses"]:
            continue
        a, b, n = np.array(fp32["totals"]), np.array(bf16["totals"]), np.array(fp32["lengths"])
        rows = len(a) // 2
        same = np.mean([(a[2 * i] > a[2 * i + 1]) == (b[2 * i] > b[2 * i + 1]) for i in range(rows)])
        lines.append(
            f"- {model}: bf16 vs fp32 mean abs diff {np.abs(a - b).sum() / n.sum():.4f} nats/token, "
            f"single-model decisions agree on {same:.1%} of {rows} rows"
        )
        pair[model] = (a, b, n)
    if len(pair) == 2:
        (sa, sb, sn), (wa, wb, wn) = pair[MODELS[0]], pair[MODELS[1]]
        fp = [combine("mean_diff", sa[k], sn[k], wa[k], wn[k]) for k in range(len(sa))]
        bf = [combine("mean_diff", sb[k], sn[k], wb[k], wn[k]) for k in range(len(sa))]
        rows = len(fp) // 2
        same = np.mean([(fp[2 * i] > fp[2 * i + 1]) == (bf[2 * i] > bf[2 * i + 1]) for i in range(rows)])
        lines.append(f"- the pair (mean_diff, both models in bf16): decisions agree on {same:.1%} of {rows} rows")
    return lines


def ceilings(report: dict) -> list[str]:
    """What the targets would need, from the measured useful FLOPs and the best fp32 matmul peak on record.

    Ratios of measured quantities, no new timing: they say whether a target is reachable on this machine at all.
    """
    by = {(r["model"], r["engine"]): r for r in report.get("engines", []) if "error" not in r}
    peaks = [r.get("matmul_gflops_same_run") for r in report.get("engines", []) + report.get("pair", [])]
    peaks += [
        report.get("matmul", {}).get("float32_gflops"),
        report.get("matmul_latest", {}).get("float32_gflops"),
        report.get("head", {}).get("matmul_same_run", {}).get("float32_gflops"),
    ]
    if not any(peaks):
        return ["- (no fp32 matmul peak in this report: run with --parts matmul first)"]
    best_peak = max(p for p in peaks if p) * 1e9
    lines = []
    per_response = 0.0
    for model in MODELS:
        cdr, ref = by.get((model, "cdr")), by.get((model, "lm-eval"))
        if not cdr:
            continue
        # generous: as if every prompt token were free (prompt sharing at its best), only response positions cost
        per_response += cdr["useful_flops"] * cdr["response_tokens"] / cdr["tokens"] / cdr["responses"]
        if ref:
            peak = (ref.get("matmul_gflops_same_run") or best_peak / 1e9) * 1e9
            share = cdr["useful_flops"] / ref["seconds"] / peak
            lines.append(
                f"- {model}: lm-eval ran at {100 * share:.0f}% of its command's fp32 peak; 0.5x its time "
                f"needs {200 * share:.0f}% of that peak for the same FLOPs "
                f"({200 * share * cdr['response_tokens'] / cdr['tokens']:.0f}% if every prompt token were free)"
            )
    if per_response:
        lines.append(
            f"- default pair: {per_response / 1e12:.3f} TFLOP per response counting response positions only; "
            f"at the best fp32 peak on record ({best_peak / 1e9:.1f} GFLOP/s) and 100% of it: "
            f"{best_peak / per_response:.2f} rewards/s at most"
        )
    if report.get("bestof8"):
        b = report["bestof8"]
        p, r = b["mean_prompt_tokens"], b["mean_response_tokens"]
        lines.append(
            f"- best-of-8: token count alone allows {8 * (p + r) / (p + 8 * r):.2f}x "
            f"(8 x {p + r:.0f} tokens against {p:.0f} + 8 x {r:.0f})"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="matmul,head,engines,pair,bestof8")
    ap.add_argument("--responses", type=int, default=460)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--bf16-models", choices=("all", "first"), default="all")
    ap.add_argument("--lm-eval-batch", type=int, default=8)
    ap.add_argument("--bestof-prompts", type=int, default=6)
    ap.add_argument("--head-positions", type=int, default=1024)
    ap.add_argument("--out", default=str(HERE / "results" / "scoring_speed.json"))
    ap.add_argument("--print-only", action="store_true", help="print the tables of the stored results, run nothing")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    ap.add_argument("--pair-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.pair_child:
        pair_child(args.pair_child[0], int(args.pair_child[1]), args.pair_child[2])
        return
    if args.child:
        model, engine, n, batch, out = args.child
        engine_child(model, engine, int(n), int(batch), out)
        return
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    parts = [] if args.print_only else args.parts.split(",")
    if parts:  # each part keeps the command that last measured it; a run of some parts leaves the others' alone
        command = " ".join(["python", "benchmarks/scoring_speed.py", *sys.argv[1:]])
        from cdr.doctor import machine_summary

        report["machine"] = {
            "cpus": os.cpu_count(),
            "cpu": machine_summary(),  # the last command's machine; each engine row keeps its own
            "commands": report.get("machine", {}).get("commands", {}) | {part: command for part in parts},
        }
    peak_now = matmul_peak() if "matmul" in parts else None
    if peak_now and ("engines" in parts or "matmul" not in report):
        report["matmul"] = peak_now  # the peak the engine table's FLOP shares are taken against
    if peak_now:
        report["matmul_latest"] = peak_now
    if "engines" in parts:  # a rerun of some (model, engine) replaces those entries and keeps the others
        fresh = run_engines(args)
        for r in fresh:
            r["matmul_gflops_same_run"] = peak_now["float32_gflops"] if peak_now else None
            r["machine"] = report["machine"]["cpu"]
        done = {(r["model"], r["engine"]) for r in fresh}
        report["engines"] = [r for r in report.get("engines", []) if (r["model"], r["engine"]) not in done] + fresh
        report["engines"].sort(
            key=lambda r: (
                MODELS.index(r["model"]),
                ENGINES.index(r["engine"]) if r["engine"] in ENGINES else len(ENGINES),
            )
        )
    if "pair" in parts:
        report["pair"] = [
            r | {"matmul_gflops_same_run": peak_now and peak_now["float32_gflops"]} for r in run_pair(args)
        ]
    if "head" in parts:
        report["head"] = head_tiles(args.head_positions) | {"matmul_same_run": peak_now}
    if "bestof8" in parts:
        report["bestof8"] = bestof8(args.bestof_prompts)
    if parts:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))

    peak = report.get("matmul")
    if peak_now:
        print(
            f"Matmul peak now: fp32 {peak_now['float32_gflops']:.1f} GFLOP/s (mm, {peak_now['size']}^3); at 1024^3 "
            f"fp32 F.linear {peak_now['float32_linear_gflops']:.1f}, bf16 F.linear "
            f"{peak_now['bfloat16_linear_gflops']:.1f}, "
            f"bf16 mm {peak_now['bfloat16_gflops']:.1f} GFLOP/s"
        )
    if peak:
        print(
            f"Matmul peak ({peak['threads']} threads): fp32 {peak['float32_gflops']:.1f} GFLOP/s ({peak['size']}^3), "
            f"bf16 {peak['bfloat16_gflops']:.1f} GFLOP/s (mm, "
            f"{'1024' if 'bfloat16_linear_gflops' in peak else '512'}^3; CPU bf16 instructions: "
            f"{'yes' if peak['cpu_bf16_instructions'] else 'no'})\n"
        )
    if report.get("engines"):
        print("\n".join(engine_table(report["engines"], peak)) + "\n")
        if agree := bf16_agreement(report["engines"]):
            print("bf16 against fp32:\n" + "\n".join(agree) + "\n")
        if compiled := compiled_vs_eager(report["engines"]):
            print("torch.compile against eager:\n" + "\n".join(compiled) + "\n")
    if report.get("pair"):
        seq, ovl = report["pair"]
        diff = max(abs(a - b) for a, b in zip(seq["rewards"], ovl["rewards"]))
        print(
            "| default pair, Python API | responses | load s | seconds | rewards/s | peak RSS MiB "
            "|\n|---|---|---|---|---|---|"
        )
        for r in report["pair"]:
            print(
                f"| {r['mode']} (threads per model: {r['threads'] or 'all'}) | {r['responses']} | {r['load_s']:.1f} | "
                f"{r['seconds']:.1f} | {r['rewards_per_s']:.2f} | {r['peak_rss_mib']:.0f} |"
            )
        print(
            f"\noverlap / sequential time: {ovl['seconds'] / seq['seconds']:.2f}x; max reward difference {diff:.1e}\n"
        )
    if report.get("head"):
        h = report["head"]
        old = h["tiles"][0]["seconds"]
        print(
            f"LM head alone, {h['positions']} positions x {h['vocab']:,} words x {h['hidden']}:\n"
            "| tile (positions x words) | seconds | GFLOP/s | time vs 128-position chunks | max abs diff "
            "|\n|---|---|---|---|---|"
        )
        for t in h["tiles"]:
            name = "128 x all (before)" if t["width"] == h["vocab"] else f"{t['positions']} x {t['width']}"
            name += " (shipped)" if [t["positions"], t["width"]] == h["shipped"] else ""
            print(
                f"| {name} | {t['seconds']:.2f} | {t['gflops']:.1f} | {t['seconds'] / old:.2f}x | "
                f"{t['max_abs_diff']:.1e} |"
            )
        print()
    if report.get("bestof8"):
        b = report["bestof8"]
        print(
            f"Best-of-8, {b['prompts']} prompts x 8 responses, prompt {b['mean_prompt_tokens']:.0f} tokens, response "
            f"{b['mean_response_tokens']:.0f} tokens: shared {b['best_s']['shared']:.1f} s, unshared "
            f"{b['best_s']['unshared']:.1f} s, speed-up x{b['speedup']:.2f}; max abs diff "
            f"{b['max_abs_diff_nats']:.1e} nats\n"
        )
    if report.get("engines"):
        print("What the targets need on this machine:\n" + "\n".join(ceilings(report)))


if __name__ == "__main__":
    main()
