"""Do the CPU backends agree, and what do they cost? transformers vs llama.cpp on the same GGUF files.

    python benchmarks/backend_agreement.py                       # mini RewardBench set, embedded pair
    python benchmarks/backend_agreement.py --speed-responses 60  # the speed/memory part on 60 responses
    python benchmarks/backend_agreement.py --gguf f32 --skip-speed  # llama.cpp on float32 copies of the files

Agreement (all 460 responses of the mini set): per-response summed log-probs of each model under each
backend (Pearson r), the single-model decisions (chosen > rejected) and the pair's decisions (mean_diff)
compared row by row. The transformers numbers come through the log-prob cache when present.
With --gguf f32, llama.cpp reads a float32 copy of each packaged file (every tensor de-quantized with gguf-py,
the metadata copied), so both backends compute with the very same float32 weights: transformers de-quantizes
the packaged file the same way when it loads it, which the script checks on the first --same-weights-check
responses (the transformers backend on the copy against the packaged file, equal to 1e-6 nats).
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
    return (
        [None if isinstance(x, Exception) else x.total for x in out],
        [None if isinstance(x, Exception) else x.n_tokens for x in out],
    )


def float32_copy(source: Path, dest: Path) -> Path:
    """The GGUF file with every tensor de-quantized to float32 and all metadata kept (file type set to ALL_F32)."""
    import gguf

    if dest.exists():
        return dest
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".partial")
    writer = gguf.GGUFWriter(tmp, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue  # the header fields and the architecture are written by the writer itself
        kind = field.types[0]
        writer.add_key_value(
            field.name, field.contents(), kind, sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        )
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in reader.tensors:
        writer.add_tensor(t.name, np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    tmp.rename(dest)
    return dest


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
    print(
        json.dumps(
            {
                "model": model,
                "backend": backend,
                "responses": n,
                "tokens": tokens,
                "load_s": load_s,
                "seconds": seconds,
                "tokens_per_s": tokens / seconds,
                "peak_rss_mib": peak,
            }
        )
    )


def agreement(kind: str, limit: int | None, check_responses: int) -> dict:
    """Per-model and pair agreement of transformers and llama.cpp on the mini set; kind 'packaged' or 'f32'."""
    from cdr.models import cache_dir, resolve_model
    from cdr.reward import combine

    rows, convs = conversations(limit)
    result: dict = {"gguf": kind, "rows": len(rows)}
    sums = {}
    for model in MODELS:
        llama_model = model
        if kind == "f32":
            llama_model = str(float32_copy(Path(resolve_model(model).path), cache_dir() / "f32" / f"{model}.gguf"))
            # transformers de-quantizes the packaged file itself: the copy must give it the very same numbers
            head = convs[:check_responses]
            packaged, copy = (
                np.array(model_logprobs(m, "hf", head, c)[0]) for m, c in ((model, "default"), (llama_model, "none"))
            )
            tokens = np.array(model_logprobs(model, "hf", head, "default")[1], dtype=float)
            result.setdefault("same_weights_check", {})[model] = {
                "responses": len(head),
                "max_abs_diff_per_token": float(np.max(np.abs(packaged - copy) / tokens)),
            }
        sums[(model, "hf")] = model_logprobs(model, "hf", convs, "default")
        sums[(model, "llamacpp")] = model_logprobs(llama_model, "llamacpp", convs, "none")
        a, b = (np.array(sums[(model, be)][0], dtype=float) for be in ("hf", "llamacpp"))
        n = np.array(sums[(model, "hf")][1], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        decisions = [(a[2 * i] > a[2 * i + 1]) == (b[2 * i] > b[2 * i + 1]) for i in range(len(rows))]
        result[model] = {
            "responses": int(ok.sum()),
            "pearson_r": float(np.corrcoef(a[ok], b[ok])[0, 1]),
            "mean_abs_diff_per_token": float(np.abs(a[ok] - b[ok]).sum() / n[ok].sum()),
            "single_model_decisions_agree": float(np.mean(decisions)),
        }

    def pair_rewards(backend):
        (s, sn), (w, wn) = sums[(MODELS[0], backend)], sums[(MODELS[1], backend)]
        return [combine("mean_diff", s[k], sn[k], w[k], wn[k]) for k in range(len(convs))]

    ra, rb = pair_rewards("hf"), pair_rewards("llamacpp")
    same = [(ra[2 * i] > ra[2 * i + 1]) == (rb[2 * i] > rb[2 * i + 1]) for i in range(len(rows))]
    result["pair_decisions_agree"] = float(np.mean(same))
    result["pair_reward_pearson_r"] = float(np.corrcoef(ra, rb)[0, 1])
    return result


def print_agreement(g: dict) -> None:
    what = "float32 copies of the packaged files" if g.get("gguf") == "f32" else "the packaged (quantized) files"
    print(f"Agreement on {g['rows']} mini-set rows ({2 * g['rows']} responses), llama.cpp on {what}:\n")
    for model, check in g.get("same_weights_check", {}).items():
        print(
            f"- {model}: transformers on the copy vs on the packaged file, first {check['responses']} responses: "
            f"max abs diff {check['max_abs_diff_per_token']:.1e} nats/token"
        )
    print("\n| model | Pearson r (per-response log-prob) | mean abs diff, nats/token | single-model decisions agree |")
    print("|---|---|---|---|")
    for model in MODELS:
        m = g[model]
        print(
            f"| {model} | {m['pearson_r']:.5f} | {m['mean_abs_diff_per_token']:.4f} | "
            f"{m['single_model_decisions_agree']:.1%} |"
        )
    print(
        f"\npair (mean_diff) decisions agree on {g['pair_decisions_agree']:.1%} of rows; "
        f"pair reward Pearson r = {g['pair_reward_pearson_r']:.5f}\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="only the first N rows of the mini set for the agreement part")
    ap.add_argument(
        "--gguf",
        choices=("packaged", "f32"),
        default="packaged",
        help="llama.cpp on the packaged quantized files, or on float32 copies of them",
    )
    ap.add_argument(
        "--same-weights-check",
        type=int,
        default=20,
        metavar="N",
        help="with --gguf f32: responses on which transformers must give the copy the packaged file's numbers",
    )
    ap.add_argument("--speed-responses", type=int, default=60)
    ap.add_argument("--skip-agreement", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "backend_agreement.json"))
    ap.add_argument("--child", nargs=3, metavar=("MODEL", "BACKEND", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        speed_child(args.child[0], args.child[1], int(args.child[2]))
        return
    out = Path(args.out)
    # one file holds the last run of each part: a run of some parts keeps the others
    report: dict = json.loads(out.read_text()) if out.exists() else {}
    key = "agreement" if args.gguf == "packaged" else "agreement_f32"
    if not args.skip_agreement:
        report[key] = agreement(args.gguf, args.limit, args.same_weights_check)
    if not args.skip_speed:
        report["speed"] = []
        for model in MODELS:
            for backend in ("hf", "llamacpp"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--child", model, backend, str(args.speed_responses)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                report["speed"].append(json.loads(proc.stdout.strip().splitlines()[-1]))
        report["speed_responses"] = args.speed_responses
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for part in ("agreement", "agreement_f32"):
        if report.get(part):
            print_agreement(report[part])
    if report.get("speed"):
        n = report.get("speed_responses", args.speed_responses)
        print(f"Speed and peak memory, first {n} responses, cache off, one process each:\n")
        print(
            "| model | backend | tokens | seconds | tokens/s | load s | peak RSS MiB |\n|---|---|---|---|---|---|---|"
        )
        for s in report["speed"]:
            print(
                f"| {s['model']} | {s['backend']} | {s['tokens']} | {s['seconds']:.1f} | {s['tokens_per_s']:.0f} | "
                f"{s['load_s']:.1f} | {s['peak_rss_mib']:.0f} |"
            )


if __name__ == "__main__":
    main()
