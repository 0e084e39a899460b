"""#22 on the full RewardBench: each reward idea against vanilla, paired, and the rule for changing the default.

The configurations were chosen on the mini development split and checked on 300 held-out rows
(docs/benchmarks.md section 17); this runs them unchanged on all 2,985 rows, in ONE `cdr eval` of an ensemble of
pairs (`--extra-pairs`): the default pair first, then SmolLM2 over itself without the prompt, at layer 8, and at
layer 8 with the winsorized token ratio. Every model pass is computed once (SmolLM2's pass with the prompt serves
all four pairs), and each row of `scores.jsonl` keeps every pair's own rewards (`pair_rewards`), so each idea,
and each two-pair ensemble, is read off the same rows:

    python benchmarks/reward_ideas_full.py ../shared/data/reward_bench/filtered.jsonl
    python benchmarks/reward_ideas_full.py --report-only        # the table from the rows scored so far

The study takes about 7 hours of 2 CPU cores, longer than one working session, and nothing outside the checkout
survives between sessions here; so the rows are scored in shards of whole subsets (each `cdr eval --subsets`,
the sections taking turns), each in a folder of its own under ``--root`` (default
``benchmarks/results/reward_ideas_full``, inside the repository). A shard that stops resumes where it stopped (the
same command); a finished one is committed (its ``results.json``, ``results.md``, ``leaderboard.json`` and
``scores.jsonl``; ``rows.jsonl`` holds RewardBench's text and is ignored) and never runs again.

It prints, per configuration: the overall score, each section's paired difference from vanilla, the overall
paired difference with its 95% interval and at the Bonferroni level for the number of comparisons, and whether
#22's rule for a default change holds: the overall interval excludes 0 and no section loses beyond its interval.
Until every shard is done the table is marked partial and covers the finished shards' subsets only (the rule is
not applied). The table goes to ``--root``/reward_ideas_full.json and .md, and a picture of the differences
(each configuration minus vanilla, overall and per section, with the paired 95% intervals) to .png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from cdr.pipelines.evaluate import weighted_rewards
from cdr.plots import difference_panels
from cdr.rewardbench import (
    SECTIONS,
    SUBSET_MAPPING,
    is_correct,
    paired_bootstrap,
    score,
    section_scores,
    subset_accuracy,
)

HERE = Path(__file__).resolve().parent
STRONG = "smollm2-135m-instruct"  # the default pair's strong model: its no-prompt and early-exit readings
# the pairs of the one run, in --extra-pairs order after the default pair (None): name -> (spec, label)
PAIRS = {
    "vanilla": (None, "vanilla: SmolLM2 over gemma-3-270m"),
    "pmi": (f"weak={STRONG},weak_prompt=empty", "SmolLM2 over itself without the prompt"),
    "x8": (f"weak={STRONG},weak_exit_layer=8", "SmolLM2 over itself at layer 8"),
    "x8-w0.05": (f"weak={STRONG},weak_exit_layer=8,token_ratio_winsor=0.05", "... with --token-ratio-winsor 0.05"),
}
# two-pair ensembles, equal weights (what `--extra-pairs` with one extra pair would score)
ENSEMBLES = {
    "ens-van-pmi": (("vanilla", "pmi"), "ensemble: vanilla + no-prompt"),
    "ens-van-x8": (("vanilla", "x8"), "ensemble: vanilla + layer 8"),
}
BASELINES = {"strong_sum": "strong model alone (summed log-prob)", "longer": "prefer the longer response"}
FULL_ROWS = 2985


# whole subsets per shard, the sections taking turns so that any prefix of the shards covers all four
SHARDS = {
    "01-chat": "alpacaeval-easy,mt-bench-easy",
    "02-safety": "refusals-dangerous,refusals-offensive",
    "03-chat-hard": "llmbar-natural,llmbar-adver-neighbor,llmbar-adver-GPTOut,llmbar-adver-manual,mt-bench-hard",
    "04-reasoning": "hep-python,hep-go,hep-cpp",
    "05-chat": "alpacaeval-hard,mt-bench-med",
    "06-safety": "xstest-should-respond,xstest-should-refuse",
    "07-chat-hard": "llmbar-adver-GPTInst",
    "08-reasoning": "hep-js,hep-rust,hep-java",
    "09-chat": "alpacaeval-length",
    "10-safety": "donotanswer",
    "11-reasoning": "math-prm",
}


def check_shards() -> None:
    """Every RewardBench subset in exactly one shard."""
    covered = [s for subsets in SHARDS.values() for s in subsets.split(",")]
    expected = [s for subsets in SUBSET_MAPPING.values() for s in subsets]
    if sorted(covered) != sorted(expected):
        raise SystemExit(f"SHARDS must hold each subset once: {sorted(covered)} != {sorted(expected)}")


def eval_command(data: str, run: Path, subsets: str, sample: int | None = None) -> list[str]:
    extra = ";".join(spec for spec, _ in list(PAIRS.values())[1:])
    trial = ["--sample", str(sample)] if sample else []
    return ["eval", data, "-o", str(run), "--subsets", subsets, "--bootstrap", "1000", "--extra-pairs", extra, *trial]


def finished(run: Path) -> bool:
    return (run / "results.json").is_file()


def scored_rows(root: Path) -> tuple[list[dict], list[str], str]:
    """Every finished shard's rows, the shards that are not finished, and the ratio variant of the runs."""
    records, missing, variants = [], [], set()
    for name in SHARDS:
        run = root / name
        if not finished(run):
            missing.append(name)
            continue
        variants.add(json.loads((run / "results.json").read_text(encoding="utf-8"))["variant"])
        records += [json.loads(x) for x in (run / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    if not records:
        sys.exit(f"no finished shard under {root} yet: run this script with the data file first")
    if len(variants) != 1:
        sys.exit(f"the shards under {root} were scored with different variants ({sorted(variants)})")
    return records, missing, variants.pop()


def verdicts(records: list[dict], variant: str) -> dict[str, list[tuple[str, bool]]]:
    """configuration -> (subset, correct) per row, in the run's order."""
    index = {name: n for n, name in enumerate(PAIRS)}
    out: dict[str, list[tuple[str, bool]]] = {name: [] for name in [*PAIRS, *ENSEMBLES, *BASELINES]}
    out["all four pairs"] = []
    for r in records:
        members = [m[variant] for m in r["pair_rewards"]]
        for name, n in index.items():
            out[name].append((r["subset"], is_correct(*members[n])))
        for name, ((a, b), _) in ENSEMBLES.items():
            mean = weighted_rewards([members[index[a]], members[index[b]]], [0.5, 0.5])
            out[name].append((r["subset"], is_correct(*mean)))
        for name in BASELINES:
            out[name].append((r["subset"], bool(r["correct"][name])))
        out["all four pairs"].append((r["subset"], bool(r["correct"][variant])))
    return out


def report(root: Path, resamples: int) -> dict:
    records, missing, variant = scored_rows(root)
    table_rows = verdicts(records, variant)
    base = table_rows.pop("vanilla")
    labels = {n: label for n, (_, label) in PAIRS.items()} | {n: label for n, (_, label) in ENSEMBLES.items()}
    labels |= BASELINES | {"all four pairs": "ensemble of all four pairs (the run's own reward)"}
    partial = bool(missing)
    bonferroni = 1 - 0.05 / len(table_rows)
    table = {
        "root": str(root),
        "variant": variant,
        "rows": len(base),
        "finished": not partial,
        "shards_missing": missing,
        "subsets": sorted({s for s, _ in base}),
        "resamples": resamples,
        "bonferroni_level": bonferroni,
        "vanilla_score": _score(base),
        "configurations": {},
    }
    for name, rows in table_rows.items():
        diff = paired_bootstrap(rows, base, n=resamples)
        strict = paired_bootstrap(rows, base, n=resamples, level=bonferroni)["score"]
        present = [s for s in SECTIONS if s in diff]
        loses = [s for s in present if diff[s][2] < 0]
        table["configurations"][name] = {
            "label": labels[name],
            "score": _score(rows),
            "difference": {k: list(v) for k, v in diff.items()},
            "score_difference_bonferroni": list(strict),
            "sections_losing_beyond_interval": loses,
            "meets_default_rule": (not partial) and diff["score"][1] > 0 and not loses,
        }
    return table


def _score(rows: list[tuple[str, bool]]) -> float:
    """RewardBench's score (the mean of the sections present, each weighted by its subsets' sizes)."""
    return score(section_scores(subset_accuracy(rows)))


def markdown(table: dict) -> str:
    sections = [s for s in SECTIONS if s in next(iter(table["configurations"].values()))["difference"]]
    head = "| configuration | score | " + " | ".join(sections) + " | minus vanilla (95%) | Bonferroni | rule |"
    lines = [head, "|" + "---|" * (len(sections) + 5)]
    lines.append(f"| {PAIRS['vanilla'][1]} | {table['vanilla_score']:.3f} |" + " |" * (len(sections) + 3))
    for c in table["configurations"].values():
        d = c["difference"]
        cells = " | ".join(f"{d[s][0]:+.3f} [{d[s][1]:+.3f}, {d[s][2]:+.3f}]" for s in sections)
        overall = f"{d['score'][0]:+.3f} [{d['score'][1]:+.3f}, {d['score'][2]:+.3f}]"
        strict = c["score_difference_bonferroni"]
        rule = "holds" if c["meets_default_rule"] else ("n/a (partial)" if not table["finished"] else "no")
        lines.append(
            f"| {c['label']} | {c['score']:.3f} | {cells} | {overall} | [{strict[1]:+.3f}, {strict[2]:+.3f}] | {rule} |"
        )
    level = table["bonferroni_level"]
    state = "all shards" if table["finished"] else f"PARTIAL, {table['rows']} of {FULL_ROWS} rows"
    lines.append(
        f"\n{table['rows']} rows ({state}; subsets: {', '.join(table['subsets'])}), variant {table['variant']}. "
        f"Paired bootstrap, {table['resamples']} resamples, rows resampled within each subset; Bonferroni: the "
        f"overall difference's interval at the {level:.4f} level for {len(table['configurations'])} comparisons. "
        "Rule (#22): change a default only when the overall interval excludes 0 and no section loses beyond its "
        "interval; it is not applied to a partial run."
    )
    return "\n".join(lines) + "\n"


def forest(table: dict, path: Path) -> None:
    """Each configuration minus vanilla with its paired 95% interval: one panel for the score, one per section."""
    configs = table["configurations"].values()
    sections = [s for s in SECTIONS if s in next(iter(configs))["difference"]]
    state = f"all {table['rows']} rows" if table["finished"] else f"PARTIAL: {table['rows']} of {FULL_ROWS} rows"
    difference_panels(
        {c["label"]: c["difference"] for c in configs},
        {"score": "overall score", **{s: s for s in sections}},
        path,
        f"RewardBench ({state}): each configuration minus vanilla (SmolLM2 over gemma-3-270m), paired bootstrap 95%",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", help="the full RewardBench rows (filtered.jsonl); omit with --report-only")
    parser.add_argument("--root", type=Path, default=HERE / "results" / "reward_ideas_full")
    parser.add_argument("--shards", help="comma-separated shard names to run (default: every unfinished one)")
    parser.add_argument("--report-only", action="store_true", help="no model runs: the table from finished shards")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--sample", type=int, help="a stratified sample of N rows per shard: a trial, not the study")
    args = parser.parse_args()
    check_shards()
    chosen = args.shards.split(",") if args.shards else list(SHARDS)
    if unknown := [n for n in chosen if n not in SHARDS]:
        parser.error(f"--shards: unknown shard(s) {', '.join(unknown)}; expected some of {', '.join(SHARDS)}")
    if not args.report_only:
        if not args.data:
            parser.error("the data file is needed unless --report-only")
        for name in chosen:
            run = args.root / name
            if finished(run):
                continue
            started = time.time()
            command = eval_command(args.data, run, SHARDS[name], args.sample)
            print(f"[shard {name}] $ cdr " + " ".join(command), flush=True)
            done = subprocess.run([sys.executable, "-m", "cdr.cli", *command])
            if done.returncode != 0:
                sys.exit(f"shard {name}: cdr eval failed with exit status {done.returncode}; run again to resume")
            print(f"[shard {name}] finished in {time.time() - started:.0f} s", flush=True)
    table = report(args.root, args.resamples)
    text = markdown(table)
    print(text)
    (args.root / "reward_ideas_full.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.root / "reward_ideas_full.md").write_text(text)
    forest(table, args.root / "reward_ideas_full.png")


if __name__ == "__main__":
    main()
