"""Customization on RewardBench: vanilla vs criteria only vs exemplars only vs both (paper) vs per-model
contrasting contexts, with the embedded pair and with SmolLM2 against itself; router quality; the cost.

    python benchmarks/recipes_ablation.py --data mini --out benchmarks/results/recipes
    python benchmarks/recipes_ablation.py --data mini+10 --out benchmarks/results/recipes_mini+10
    python benchmarks/recipes_ablation.py --data ../shared/data/reward_bench/filtered.jsonl --variants vanilla,paper \
        --subsets donotanswer,refusals-dangerous,refusals-offensive,xstest-should-refuse,xstest-should-respond \
        --skip routers,timing --out benchmarks/results/recipes_safety     # one section, every row

`--data mini+K` is the mini set (10 rows of each of the 23 subsets) plus K more rows of each subset drawn
from the full filtered set (seeded, disjoint from the mini rows): a larger sample of the same design.

Each recipe variant is one resumable `cdr eval` run in OUT/runs/ (not committed: its rows.jsonl holds
RewardBench text); the same command again resumes and the log-prob cache keeps finished model passes, so
the script can be stopped and restarted. It then prints and writes:
- a table per reward variant (sum, mean, mean_diff) of section scores with 95% bootstrap intervals,
- each recipe minus vanilla on the same rows, with 95% paired bootstrap intervals (when vanilla ran in OUT),
- the router's domain against the RewardBench section for the rules router (on --router-data, default the
  full filtered set when present) and the LLM router (on --data), with its cost per row,
- the scoring time of the paper recipe against vanilla on the same rows with the cache off (side by side,
  alternating, --timing-rows rows).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FULL = ROOT.parent / "shared" / "data" / "reward_bench" / "filtered.jsonl"
SMOL = "smollm2-135m-instruct"

# name -> (recipe YAML, extra cdr eval arguments)
VARIANTS = {
    "vanilla": ("name: vanilla\n", []),
    "criteria": ("extends: paper\nname: criteria-only\nexemplars: 0\n", []),
    "exemplars": ("extends: paper\nname: exemplars-only\nuse_criteria: false\n", []),
    "paper": ("extends: paper\nname: paper\n", []),
    "contrastive": ("extends: contrastive\nname: contrastive\n", []),
    "vanilla-self": ("name: vanilla\n", ["--weak", SMOL]),
    "contrastive-self": ("extends: contrastive\nname: contrastive\n", ["--weak", SMOL]),
}
SECTIONS = ("Chat", "Chat Hard", "Safety", "Reasoning")
SECTION_DOMAIN = {"Chat": "CHAT", "Chat Hard": "CHAT", "Safety": "SAFETY", "Reasoning": "REASONING"}


def extended_mini(per_subset: int, out: Path, seed: int = 0) -> str:
    """Write the mini rows plus `per_subset` more rows of each subset from the full set; return the file."""
    import random

    from cdr.pipelines.evaluate import mini_path

    mini = [json.loads(line) for line in mini_path().read_text().splitlines() if line.strip()]
    taken = {(r["subset"], r["id"]) for r in mini}
    by_subset: dict[str, list[dict]] = defaultdict(list)
    for line in FULL.read_text().splitlines():
        if line.strip() and (row := json.loads(line)) and (row["subset"], row["id"]) not in taken:
            by_subset[row["subset"]].append(row)
    rng = random.Random(seed)
    extra = [row for subset in sorted(by_subset) for row in rng.sample(by_subset[subset], per_subset)]
    path = out / "runs" / f"mini+{per_subset}.jsonl"  # RewardBench text: under runs/, not committed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in mini + extra))
    return str(path)


def run_eval(name: str, data: str, out: Path, quiet: bool, subsets: str | None = None) -> dict:
    recipe_text, extra = VARIANTS[name]
    recipe = out / "recipes" / f"{name}.yaml"
    recipe.parent.mkdir(parents=True, exist_ok=True)
    recipe.write_text(recipe_text)
    cmd = (
        [
            sys.executable,
            "-m",
            "cdr.cli",
            "eval",
            data,
            "--output-dir",
            str(out / "runs" / name),
            "--recipe",
            str(recipe),
            "--chunk-rows",
            "32",
            *extra,
        ]
        + (["-q"] if quiet else [])
        + (["--subsets", subsets] if subsets else [])
    )
    print("$ cdr " + " ".join(cmd[3:]), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    results = json.loads((out / "runs" / name / "results.json").read_text())
    results["wall_s"] = round(time.time() - start, 1)
    return results


def cell(f: dict, key: str) -> str:
    value = f["accuracy"] if key == "score" else f["sections"].get(key)
    lo, hi = f["intervals"].get(key) or (None, None)
    return "-" if value is None else (f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{value:.3f}")


def ablation_table(results: dict[str, dict], variant: str) -> list[str]:
    lines = [f"| recipe ({variant}) | " + " | ".join(SECTIONS) + " | score |", "|---|" + "---|" * (len(SECTIONS) + 1)]
    for name, r in results.items():
        f = r["variants"][variant]
        lines.append(f"| {name} | " + " | ".join(cell(f, s) for s in SECTIONS) + f" | {cell(f, 'score')} |")
    return lines


def correctness(run_dir: Path, variant: str) -> dict[tuple[str, str], bool] | None:
    """(subset, id) -> whether the variant preferred the chosen response, from a run's scores.jsonl."""
    from cdr.rewardbench import is_correct

    path = run_dir / "scores.jsonl"
    if not path.exists():
        return None
    out = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        chosen, rejected = (row.get("rewards") or {}).get(variant) or (None, None)
        out[(row["subset"], row["id"])] = is_correct(chosen, rejected)
    return out


def paired_differences(runs: Path, names: list[str], variant: str, n: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Each recipe minus vanilla on the same rows: section and score differences with 95% paired bootstrap
    intervals (``cdr.rewardbench.paired_bootstrap``: the same resampled rows, within each subset, for both)."""
    from cdr.rewardbench import paired_bootstrap

    base = correctness(runs / "vanilla", variant)
    if base is None:
        return {}
    keys = sorted(base)
    out = {}
    for name in names:
        other = correctness(runs / name, variant) if name != "vanilla" else None
        if other is None or set(other) != set(base):
            continue
        diff = paired_bootstrap([(k[0], other[k]) for k in keys], [(k[0], base[k]) for k in keys], n=n, seed=seed)
        out[name] = {k: list(v) for k, v in diff.items()}
    return out


def difference_table(diffs: dict[str, dict], variant: str) -> list[str]:
    lines = [
        f"| recipe minus vanilla ({variant}) | " + " | ".join(SECTIONS) + " | score |",
        "|---|" + "---|" * (len(SECTIONS) + 1),
    ]
    for name, d in diffs.items():
        cells = [f"{d[k][0]:+.3f} [{d[k][1]:+.3f}, {d[k][2]:+.3f}]" if k in d else "-" for k in (*SECTIONS, "score")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def confusion(sections: list[str], domains: list[str]) -> dict[str, dict[str, int]]:
    matrix: dict[str, Counter] = defaultdict(Counter)
    for s, d in zip(sections, domains):
        matrix[s][d] += 1
    return {s: dict(matrix[s]) for s in SECTIONS if s in matrix}


def agreement(matrix: dict[str, dict[str, int]]) -> float:
    total = sum(sum(c.values()) for c in matrix.values())
    return sum(c.get(SECTION_DOMAIN[s], 0) for s, c in matrix.items()) / total


def matrix_lines(title: str, matrix: dict) -> list[str]:
    domains = ["SAFETY", "REASONING", "CHAT"]
    lines = [
        f"{title} (rows: RewardBench section, columns: routed domain; agreement {agreement(matrix):.3f})",
        "",
        "| section | " + " | ".join(domains) + " |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | " + " | ".join(str(c.get(d, 0)) for d in domains) + " |" for s, c in matrix.items()]
    return lines


def routers(data: str, router_data: str) -> dict:
    from cdr import DensityRatio
    from cdr.pipelines.evaluate import load_rewardbench
    from cdr.recipes import LLMRouter, RulesRouter, load_recipe, route
    from cdr.rewardbench import SUBSET_MAPPING

    section_of = {s: name for name, subsets in SUBSET_MAPPING.items() for s in subsets}
    paper = load_recipe("paper")
    out = {}
    for label, source in (("rules", router_data), ("rules_dev", data)):
        rows, _ = load_rewardbench(source, log=lambda _: None)
        prompts = [tuple(_messages(r["prompt"])) for r in rows]
        start = time.perf_counter()
        domains = route(paper, RulesRouter(paper.router.rules), prompts)
        seconds = time.perf_counter() - start
        out[label] = {
            "data": source,
            "rows": len(rows),
            "seconds_per_row": seconds / len(rows),
            "matrix": confusion([section_of[r["subset"]] for r in rows], domains),
        }
    rows, _ = load_rewardbench(data, log=lambda _: None)
    reward = DensityRatio(strong=SMOL, weak=SMOL, recipe="paper", cache="none")
    llm = LLMRouter(reward.strong, {n: d.description for n, d in paper.domains.items()}, max_chars=2000)
    prompts = [tuple(_messages(r["prompt"])) for r in rows]
    start = time.perf_counter()
    domains = route(paper, llm, prompts)
    seconds = time.perf_counter() - start
    out["llm"] = {
        "data": data,
        "rows": len(rows),
        "model": SMOL,
        "seconds_per_row": seconds / len(rows),
        "matrix": confusion([section_of[r["subset"]] for r in rows], domains),
    }
    return out


def _messages(prompt):
    from cdr.conversation import Message

    return [Message(m["role"], m["content"]) for m in prompt]


def timing(data: str, n_rows: int, repeats: int = 2) -> dict:
    """Scoring time with the paper recipe against vanilla, same rows, cache off, alternating."""
    from cdr import DensityRatio
    from cdr.conversation import Conversation
    from cdr.pipelines.evaluate import Selection, load_rewardbench

    rows, _ = load_rewardbench(data, Selection(sample=n_rows, seed=1), log=lambda _: None)
    convs = [Conversation.from_prompt_response(r["prompt"], r[side]) for r in rows for side in ("chosen", "rejected")]
    rewards = {name: DensityRatio(recipe=name, cache="none") for name in ("vanilla", "paper")}
    seconds: dict[str, list[float]] = {name: [] for name in rewards}
    tokens = {}
    for _ in range(repeats):
        for name, reward in rewards.items():
            start = time.perf_counter()
            reward.model_logprobs(convs)
            seconds[name].append(time.perf_counter() - start)
            custom = reward.customize(convs)
            tokens[name] = sum(
                len(reward.strong.span(c.strong, reward.strong.renderer, True).token_ids) for c in custom
            )
    best = {name: min(s) for name, s in seconds.items()}
    return {
        "rows": len(rows),
        "responses": len(convs),
        "seconds": seconds,
        "best_s": best,
        "ratio_paper_over_vanilla": best["paper"] / best["vanilla"],
        "strong_tokens": tokens,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="mini")
    p.add_argument("--router-data", default=str(FULL) if FULL.exists() else "mini")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "recipes"))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--subsets", help="only these RewardBench subsets (comma-separated), e.g. the Safety section's")
    p.add_argument("--timing-rows", type=int, default=24)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: routers, timing")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="tabulate the finished runs in OUT/runs (and OUT/routers.json, OUT/timing.json); score nothing",
    )
    p.add_argument(
        "--vanilla-from",
        help="take the vanilla row from this `cdr eval` results.json (the same computation, "
        "e.g. benchmarks/results/eval_mini/results.json) instead of running it",
    )
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    skip = set(args.skip.split(","))
    data = args.data
    if data.startswith("mini+"):
        data = extended_mini(int(data.removeprefix("mini+")), out)

    names = args.variants.split(",")
    results = {}
    for name in names:
        if name == "vanilla" and args.vanilla_from:
            results[name] = json.loads(Path(args.vanilla_from).read_text())
        elif args.report_only:
            path = out / "runs" / name / "results.json"
            if path.exists():
                results[name] = json.loads(path.read_text())
        else:
            results[name] = run_eval(name, data, out, quiet=True, subsets=args.subsets)
    summary = {
        "data": args.data,
        "variants": {
            n: {
                "recipe": VARIANTS[n][0],
                "args": VARIANTS[n][1],
                "model": r["model"],
                "ref_model": r["ref_model"],
                "variants": r["variants"],
                "routing": r.get("routing"),
                "timing": r["timing"],
            }
            for n, r in results.items()
        },
    }
    if args.vanilla_from and "vanilla" in summary["variants"]:
        summary["variants"]["vanilla"]["from"] = args.vanilla_from
    lines = [
        f"Recipe ablation on `{args.data}` ({next(iter(results.values()))['num_prompts']} rows); "
        "95% bootstrap intervals (rows resampled within subsets)."
    ]
    for variant in ("sum", "mean", "mean_diff"):
        lines += [""] + ablation_table(results, variant)
    summary["paired_differences"] = {}
    for variant in ("sum", "mean", "mean_diff"):
        if diffs := paired_differences(out / "runs", names, variant):
            summary["paired_differences"][variant] = diffs
            lines += [""] + difference_table(diffs, variant)
    if "routers" not in skip and not args.report_only:
        (out / "routers.json").write_text(json.dumps(routers(data, args.router_data), indent=2))
    if (out / "routers.json").exists():
        summary["routers"] = r = json.loads((out / "routers.json").read_text())
        for label, title in (("rules", "Rules router"), ("rules_dev", "Rules router"), ("llm", f"LLM router ({SMOL})")):
            lines += [
                "",
                *matrix_lines(
                    f"{title} on `{r[label]['data']}` ({r[label]['rows']} rows, "
                    f"{1000 * r[label]['seconds_per_row']:.2f} ms/row)",
                    r[label]["matrix"],
                ),
            ]
    if "timing" not in skip and not args.report_only:
        (out / "timing.json").write_text(json.dumps(timing(data, args.timing_rows), indent=2))
    if (out / "timing.json").exists():
        summary["timing"] = t = json.loads((out / "timing.json").read_text())
        lines += [
            "",
            f"Cost: {t['responses']} responses, cache off, best of 2 alternating runs: vanilla "
            f"{t['best_s']['vanilla']:.1f} s, paper {t['best_s']['paper']:.1f} s "
            f"(x{t['ratio_paper_over_vanilla']:.2f}); strong-model tokens {t['strong_tokens']['vanilla']} vs "
            f"{t['strong_tokens']['paper']}.",
        ]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
