"""vLLM against transformers on the 460 responses of the mini RewardBench set, embedded pair (#27).

    .venv-vllm/bin/python benchmarks/vllm_agreement.py --rows 230               # everything, all rows
    .venv-vllm/bin/python benchmarks/vllm_agreement.py --rows 40 --bf16-rows 20  # a quick pass; rerun to extend
    .venv-vllm/bin/python benchmarks/vllm_agreement.py --sampling 4 4 64         # cdr sample: transformers vs vLLM
    .venv-vllm/bin/python benchmarks/vllm_agreement.py --pair-speed 20           # the pair through `cdr score`

Per model (SmolLM2-135M-Instruct, gemma-3-270m, from cdr's converted transformers directories of the
packaged GGUF files) and per configuration (hf float32 = the reference, vllm float32, vllm bfloat16), one
subprocess loads the model (load time reported apart) and scores the responses in slices of --slice,
appending every response's per-token log-probs to benchmarks/results/vllm/<model>.<backend>-<dtype>.jsonl.
A rerun resumes each file where it stopped, so --rows can grow run by run; speed is the sum over the slices
(tokens = every token of each sequence, prompt included, since both backends run the whole sequence).

Agreement, on the rows every configuration has finished: per-token absolute error against hf float32
(mean and max over all response tokens), per-response mean error, single-model decisions (chosen > rejected
by the summed log-prob) and the pair's decisions (mean_diff: strong mean log-prob - weak mean log-prob,
both models on the same configuration) compared row by row with the pair's hf float32 decisions.

`--pair-speed ROWS` runs the whole embedded pair through `cdr score` (one process per configuration, the
log-prob cache off) on ROWS mini-set rows spread over the set (2 responses each): hf float32, hf bfloat16,
llamacpp (the GGUF files themselves), vllm float32 and vllm bfloat16, the configurations alternating when
--repeats > 1. A configuration ending in +overlap scores both models at once (`--overlap`; for vllm with
`--vllm-multiprocessing`, which in-process engines need).
Load time (up to cdr's "loaded" line) is reported apart from scoring time (from that line to exit).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "vllm"
MODELS = ("smollm2-135m-instruct", "gemma-3-270m")
CONFIGS = (("hf", "float32"), ("vllm", "float32"), ("vllm", "bfloat16"))


def conversations():
    from cdr.pipelines.evaluate import conversations as convs_of
    from cdr.pipelines.evaluate import load_rewardbench

    rows, _ = load_rewardbench("mini", log=lambda msg: None)
    return rows, [c for row in rows for c in convs_of(row)]


def path_for(model: str, backend: str, dtype: str) -> Path:
    return OUT / f"{model}.{backend}-{dtype}.jsonl"


def done_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break  # a line cut by a kill: dropped, recomputed
    return out


def child(model: str, backend: str, dtype: str, responses: int, slice_size: int) -> None:
    """Load one model on one backend and score responses [done, responses) in slices, appending as it goes."""
    from cdr.config import RewardConfig
    from cdr.models import resolve_model
    from cdr.reward import ModelScorer

    path = path_for(model, backend, dtype)
    records = done_records(path)
    start = sum(1 for r in records if r.get("kind") == "response")
    if start >= responses:
        return
    _, convs = conversations()
    t0 = time.time()
    scorer = ModelScorer(resolve_model(model), backend, RewardConfig.from_flat(cache="none", dtype=dtype), None)
    load_s = time.time() - t0
    with path.open("a") as f:
        f.write(json.dumps({"kind": "load", "seconds": load_s}) + "\n")
        f.flush()
        for s in range(start, responses, slice_size):
            part = convs[s : min(responses, s + slice_size)]
            tokens = sum(len(scorer.span(c, scorer.renderer, True).token_ids) for c in part)
            t0 = time.time()
            out = scorer.logprobs(part, scorer.renderer, True)
            seconds = time.time() - t0
            f.write(json.dumps({"kind": "slice", "responses": len(part), "tokens": tokens, "seconds": seconds}) + "\n")
            for k, lp in enumerate(out):
                f.write(
                    json.dumps(
                        {
                            "kind": "response",
                            "index": s + k,
                            "logprobs": None if isinstance(lp, Exception) else [float(x) for x in lp.logprobs],
                        }
                    )
                    + "\n"
                )
            f.flush()
            print(
                f"{model} {backend}-{dtype}: {s + len(part)}/{responses} responses, {tokens / seconds:.0f} tokens/s",
                file=sys.stderr,
                flush=True,
            )


def load(model, backend, dtype):
    records = done_records(path_for(model, backend, dtype))
    lps = {
        r["index"]: (np.array(r["logprobs"]) if r["logprobs"] is not None else None)
        for r in records
        if r["kind"] == "response"
    }
    slices = [r for r in records if r["kind"] == "slice"]
    loads = [r["seconds"] for r in records if r["kind"] == "load"]
    return lps, slices, loads


def report(rows: list[dict]) -> dict:
    data = {(m, b, d): load(m, b, d) for m in MODELS for b, d in CONFIGS}
    result: dict = {"speed": [], "agreement": []}
    for (m, b, d), (_, slices, loads) in data.items():
        if slices:
            tok, sec = sum(s["tokens"] for s in slices), sum(s["seconds"] for s in slices)
            result["speed"].append(
                {
                    "model": m,
                    "backend": b,
                    "dtype": d,
                    "responses": sum(s["responses"] for s in slices),
                    "tokens": tok,
                    "seconds": sec,
                    "tokens_per_s": tok / sec,
                    "load_s": loads,
                }
            )
    for b, d in CONFIGS[1:]:
        # rows whose two responses every file involved has finished (responses are computed in order)
        def prefix(lps):
            n = 0
            while n in lps:
                n += 1
            return n // 2

        n_rows = min([len(rows)] + [prefix(data[(m, x, y)][0]) for m in MODELS for x, y in (("hf", "float32"), (b, d))])
        if n_rows == 0:
            continue
        entry: dict = {"backend": b, "dtype": d, "rows": n_rows}
        means = {}
        for m in MODELS:
            ref, got = data[(m, "hf", "float32")][0], data[(m, b, d)][0]
            errs, per_resp, single = [], [], []
            for i in range(2 * n_rows):
                if ref[i] is None or got[i] is None:
                    continue
                assert len(ref[i]) == len(got[i]), (m, i)
                e = np.abs(ref[i] - got[i])
                errs.append(e)
                per_resp.append(e.mean())
            for r in range(n_rows):
                a, c = ref[2 * r], ref[2 * r + 1]
                x, y = got[2 * r], got[2 * r + 1]
                if a is not None and c is not None and x is not None and y is not None:
                    single.append((a.sum() > c.sum()) == (x.sum() > y.sum()))
            allerr = np.concatenate(errs)
            entry[m] = {
                "tokens": int(allerr.size),
                "mean_abs_err_per_token": float(allerr.mean()),
                "max_abs_err_per_token": float(allerr.max()),
                "max_response_mean_err": float(max(per_resp)),
                "single_model_decisions_agree": float(np.mean(single)),
            }
            means[m] = (
                {i: ref[i].mean() for i in range(2 * n_rows) if ref[i] is not None},
                {i: got[i].mean() for i in range(2 * n_rows) if got[i] is not None},
            )
        agree, total = 0, 0
        for r in range(n_rows):
            i, j = 2 * r, 2 * r + 1
            try:
                ref_pair = [means[MODELS[0]][0][k] - means[MODELS[1]][0][k] for k in (i, j)]
                got_pair = [means[MODELS[0]][1][k] - means[MODELS[1]][1][k] for k in (i, j)]
            except KeyError:
                continue
            total += 1
            agree += (ref_pair[0] > ref_pair[1]) == (got_pair[0] > got_pair[1])
        entry["pair_decisions_agree"] = agree / total
        entry["pair_rows"] = total
        result["agreement"].append(entry)
    return result


def sampling_child(engine: str, prompts: int, n: int, max_new_tokens: int) -> None:
    """cdr's policy engines on the embedded strong model (SmolLM2-135M-Instruct): load, one generate, one JSON line."""
    from cdr.generation import SamplingOptions, load_policy
    from cdr.models import resolve_model

    mini = Path(__file__).resolve().parent.parent / "src" / "cdr" / "data" / "rewardbench_mini.jsonl"
    rows = [json.loads(line) for line in mini.read_text().splitlines()[:prompts]]
    batch = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    t0 = time.time()
    policy = load_policy(engine, resolve_model("smollm2-135m-instruct"), dtype="float32")
    load_s = time.time() - t0
    options = SamplingOptions(n=n, max_new_tokens=max_new_tokens, engine=engine)
    t0 = time.time()
    out = policy.generate(batch, options, seed=0)
    seconds = time.time() - t0
    tokens = sum(len(policy.tokenizer(x, add_special_tokens=False)["input_ids"]) for r in out for x in r)
    print(
        json.dumps(
            {
                "engine": engine,
                "prompts": prompts,
                "n": n,
                "max_new_tokens": max_new_tokens,
                "load_s": load_s,
                "seconds": seconds,
                "generated_tokens": tokens,
                "tokens_per_s": tokens / seconds,
            }
        )
    )


PAIR_CONFIGS = (
    ("hf", "float32"),
    ("hf", "bfloat16"),
    ("llamacpp", "auto"),
    ("vllm", "float32"),
    ("vllm", "bfloat16"),
)


def pair_speed(rows: list[dict], n_rows: int, repeats: int, configs: list[tuple[str, str]], save) -> list[dict]:
    """The pair through `cdr score`, each configuration in its own process: load and scoring seconds. save(runs)
    is called after every configuration, so a long run keeps what it has measured."""
    import tempfile

    picked = [rows[i * len(rows) // n_rows] for i in range(n_rows)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "responses.jsonl"
        with data.open("w") as f:
            for row in picked:
                for side in ("chosen", "rejected"):
                    f.write(json.dumps({"prompt": row["prompt"], "response": row[side]}) + "\n")
        for repeat in range(repeats):
            for config in configs:
                backend, _, rest = config.partition("-")
                dtype, _, mode = rest.partition("+")
                out = Path(tmp) / f"{config}-{repeat}.jsonl"
                cmd = [sys.executable, "-m", "cdr.cli", "score", str(data), "-o", str(out), "--backend", backend]
                cmd += ["--dtype", dtype, "--cache", "none", "--chunk-rows", str(2 * n_rows), "-q"]
                if mode == "overlap":  # both models at once; vLLM engines then need processes of their own
                    cmd += ["--overlap"] + (["--vllm-multiprocessing"] if backend == "vllm" else [])
                t0 = time.time()
                proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
                loaded_at, log = None, []
                for line in proc.stderr:
                    log.append(line)
                    if loaded_at is None and " loaded " in line:
                        loaded_at = time.time()
                if proc.wait() != 0 or loaded_at is None:
                    raise SystemExit(f"{config} failed:\n{''.join(log[-20:])}")
                end = time.time()
                rewards = [json.loads(line)["reward"] for line in out.read_text().splitlines()]
                decisions = [a > b for a, b in zip(rewards[::2], rewards[1::2])]
                runs.append(
                    {
                        "config": config,
                        "backend": backend,
                        "dtype": dtype,
                        "repeat": repeat,
                        "responses": len(rewards),
                        "load_s": round(loaded_at - t0, 2),
                        "scoring_s": round(end - loaded_at, 2),
                        "rewards_per_s": len(rewards) / (end - loaded_at),
                        "decisions": decisions,
                        "rewards": rewards,
                    }
                )
                save(runs)
                took = f"load {loaded_at - t0:.1f} s, {len(rewards)} rewards in {end - loaded_at:.1f} s"
                print(
                    f"{config}: {took}",
                    file=sys.stderr,
                    flush=True,
                )
    reference = runs[0]["decisions"]
    for run in runs:
        same = [a == b for a, b in zip(run["decisions"], reference)]
        run["pair_decisions_agree_with_hf_float32"] = float(np.mean(same))
    return runs


def cpu_info() -> dict:
    """The CPU as `cdr doctor` reads it (model, logical CPUs, the features that decide precision)."""
    from cdr.doctor import machine_facts, machine_summary

    facts = machine_facts()
    return {"summary": machine_summary(facts), "model": facts["cpu_model"], "flags": facts["cpu_features"]}


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=230, help="mini-set rows (2 responses each) for hf and vllm float32")
    ap.add_argument("--bf16-rows", type=int, help="rows for vllm bfloat16 (default: --rows)")
    ap.add_argument("--slice", type=int, default=20, help="responses per call (and per saved step)")
    ap.add_argument("--only", choices=[f"{b}-{d}" for b, d in CONFIGS], action="append", help="run only these")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--sampling",
        nargs=3,
        type=int,
        metavar=("PROMPTS", "N", "MAX_NEW_TOKENS"),
        help="only measure cdr sample's engines (hf, vllm) on the embedded strong model, float32",
    )
    ap.add_argument("--pair-speed", type=int, metavar="ROWS", help="only time the pair through `cdr score`")
    ap.add_argument("--repeats", type=int, default=1, help="--pair-speed: passes over the configurations")
    ap.add_argument(
        "--pair-configs",
        default=",".join(f"{b}-{d}" for b, d in PAIR_CONFIGS),
        help="--pair-speed: BACKEND-DTYPE[+overlap] list, the first is the reference (+overlap: both models at once, "
        "with --vllm-multiprocessing for vllm)",
    )
    ap.add_argument("--child", nargs=4, metavar=("MODEL", "BACKEND", "DTYPE", "RESPONSES"), help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(OUT), help="folder for the per-response files and the summaries")
    args = ap.parse_args()
    OUT = Path(args.results)
    if args.child:
        if args.child[0] == "sampling":
            n, max_new_tokens = map(int, args.child[3].split(":"))
            sampling_child(args.child[1], int(args.child[2]), n, max_new_tokens)
            return
        child(*args.child[:3], int(args.child[3]), args.slice)
        return
    if args.sampling:
        runs = []
        for engine in ("hf", "vllm"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "sampling",
                    engine,
                    *map(str, args.sampling[:1]),
                    f"{args.sampling[1]}:{args.sampling[2]}",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "sampling.json").write_text(json.dumps(runs, indent=2))
        print(json.dumps(runs, indent=2))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    rows, _ = conversations()
    if args.pair_speed:
        configs = args.pair_configs.split(",")
        machine = {"cpu": cpu_info()}

        def save(runs):
            result = {"rows": args.pair_speed, "runs": runs, "machine": machine}
            (OUT / "pair_speed.json").write_text(json.dumps(result, indent=2))

        runs = pair_speed(rows, args.pair_speed, args.repeats, configs, save)
        save(runs)
        print("| configuration | responses | load s | scoring s | rewards/s | vs hf float32 | decisions = hf float32 |")
        print("|---|---|---|---|---|---|---|")
        base = runs[0]["scoring_s"]
        for r in runs:
            print(
                f"| {r['config']} | {r['responses']} | {r['load_s']:.1f} | {r['scoring_s']:.1f} | "
                f"{r['rewards_per_s']:.2f} | {base / r['scoring_s']:.2f}x | "
                f"{100 * r['pair_decisions_agree_with_hf_float32']:.0f}% |"
            )
        return
    if not args.report_only:
        for model in MODELS:
            for backend, dtype in CONFIGS:
                if args.only and f"{backend}-{dtype}" not in args.only:
                    continue
                n = args.bf16_rows if dtype == "bfloat16" and args.bf16_rows is not None else args.rows
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--child",
                        model,
                        backend,
                        dtype,
                        str(2 * min(n, len(rows))),
                        "--slice",
                        str(args.slice),
                        "--results",
                        str(OUT),
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                )
    result = report(rows)
    import torch

    result["machine"] = {"cpu": cpu_info(), "python": platform.python_version(), "torch": torch.__version__}
    try:
        import transformers
        import vllm

        result["machine"].update(transformers=transformers.__version__, vllm=vllm.__version__)
    except ImportError:
        pass
    (OUT / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
