"""``cdr eval --benchmark rewardbench2``: a density-ratio reward on RewardBench 2 with the official arithmetic.

Rows (``prompt, chosen (list), rejected (list), num_correct, subset, id``, plus the data set's other columns)
come from a local JSONL/Parquet file, the packaged sample (``sample``: a few rows per subset in the exact
schema, written for this project; not the benchmark) or the hub (``allenai/reward-bench-2``, split
``test``, online users only). Each completion is scored once per model; every variant and baseline is
derived from those numbers, as for v1 (``cdr.pipelines.evaluate``), with the same resumable row loop.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cdr import rewardbench2 as rb2
from cdr.conversation import Conversation, ConversationError, validate_prompt
from cdr.data import RawRow
from cdr.errors import CdrError, RowError
from cdr.pipelines.evaluate import (
    Benchmark,
    Selection,
    cell,
    count_outcome,
    results_head,
    routing,
    select_rows,
    side_record,
    timing_line,
    variant_table,
)
from cdr.pipelines.runner import ChunkContext
from cdr.reward import DensityRatio
from cdr.rewardbench import ALL_VARIANTS, LABELS, response_score

logger = logging.getLogger(__name__)

HUB_DATASET = "allenai/reward-bench-2"
SAMPLE = "sample"
REQUIRED = ("prompt", "chosen", "rejected", "num_correct", "subset", "id")
CHANCE = 0.25  # best-of-4: one chosen among four completions


def sample_path() -> Path:
    return Path(str(resources.files("cdr") / "data" / "rewardbench2_sample.jsonl"))


def _texts(data: dict, name: str, location: str) -> list[str]:
    value = data[name]
    if not isinstance(value, list) or not value:
        raise RowError(
            location, name, f"expected a non-empty list of completions, got {type(value).__name__}", "wrong type"
        )
    for i, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise RowError(location, f"{name}[{i}]", "expected non-empty text", "wrong type")
    return value


def _count(data: dict, name: str, location: str) -> int:
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowError(location, name, f"expected a whole number, got {value!r}", "wrong type")
    return value


def check_row(raw: RawRow) -> dict[str, Any]:
    """A RewardBench 2 row with its fields checked, or a RowError naming the field."""
    if raw.error is not None:
        raise raw.error
    data, where = raw.data or {}, raw.location
    for name in REQUIRED:
        if data.get(name) is None or data.get(name) == "":
            raise RowError(where, name, f"missing: a RewardBench 2 row needs {', '.join(REQUIRED)}", "missing field")
    chosen, rejected = _texts(data, "chosen", where), _texts(data, "rejected", where)
    num_correct = _count(data, "num_correct", where)
    if num_correct != len(chosen):
        raise RowError(
            where, "num_correct", f"is {num_correct} but 'chosen' holds {len(chosen)} completions", "inconsistent"
        )
    for name, expected in (("num_incorrect", len(rejected)), ("total_completions", len(chosen) + len(rejected))):
        if data.get(name) is not None and _count(data, name, where) != expected:
            raise RowError(where, name, f"is {data[name]} but the row holds {expected}", "inconsistent")
    if not isinstance(data["subset"], str):
        raise RowError(where, "subset", f"expected a subset name (a string), got {type(data['subset']).__name__}")
    if rb2.is_ties(data["subset"]):
        try:
            rb2.ties_id(data["id"])
        except ValueError as exc:
            raise RowError(where, "id", str(exc), "bad Ties id") from None
    try:
        prompt = [m.as_dict() for m in validate_prompt(data["prompt"], "prompt")]
    except ConversationError as exc:
        raise RowError.from_conversation_error(where, exc) from None
    return {
        "subset": data["subset"],
        "id": str(data["id"]),
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "num_correct": num_correct,
        "source": where,
    }


def load_rewardbench2(
    source: str, selection: Selection = Selection(), on_error: str = "skip", log: Callable[[str], None] | None = None
) -> tuple[list[dict], list[dict]]:
    """Checked, selected rows and the reports of the rows left out as malformed (``on_error='fail'`` raises)."""
    if source == "mini":
        raise CdrError("'mini' is the RewardBench v1 sample; for RewardBench 2 pass 'sample', a file or a hub id")
    rows, problems = select_rows(
        source, check_row, selection, on_error, log, packaged={SAMPLE: sample_path()}, split="test"
    )
    outside = sorted({r["subset"] for r in rows} - set(rb2.SUBSETS))
    if outside:
        (log or logger.info)(f"note: subsets outside RewardBench 2's six are scored as best-of-N: {', '.join(outside)}")
    return rows, problems


def completions(row: dict) -> list[Conversation]:
    """The row's completions as conversations, correct ones first (the official order)."""
    return [Conversation.from_prompt_response(row["prompt"], text) for text in row["chosen"] + row["rejected"]]


@dataclass(frozen=True)
class EvalJobV2:
    """What ``cdr eval --benchmark rewardbench2`` does to a chunk of selected rows, for any engine."""

    summary_order = ("scored", "unscorable")
    desc = "evaluating (RewardBench 2)"

    def key(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return {"command": "eval", "benchmark": "rewardbench2", "provenance": provenance}

    def processor(self, reward: DensityRatio):
        if reward.extra_pairs:
            raise CdrError(
                "extra_pairs (--extra-pairs) is not supported with RewardBench 2 yet; evaluate one pair at a time "
                "(an ensemble of pairs is evaluated on RewardBench v1)"
            )

        def process(chunk: list[RawRow], ctx: ChunkContext) -> list[dict]:
            picked = [raw.data for raw in chunk]
            per_row = [completions(row) for row in picked]
            convs = [c for cs in per_row for c in cs]
            passes = 2 * len(convs)  # each completion once per model
            pair = reward.model_logprobs(
                convs,
                on_progress=lambda n: ctx.advance(n * len(picked) / passes),
                rows=[row for row, cs in zip(picked, per_row) for _ in cs],
            )
            records, at = [], 0
            for row, cs in zip(picked, per_row):
                texts = row["chosen"] + row["rejected"]
                sides = [side_record(t, pair.strong[at + i], pair.weak[at + i]) for i, t in enumerate(texts)]
                errors = [
                    f"{role} completion {i}: {x}"
                    for role, xs in (("strong", pair.strong), ("weak", pair.weak))
                    for i, x in enumerate(xs[at : at + len(cs)])
                    if isinstance(x, Exception)
                ]
                error = count_outcome(ctx, row["source"], "; ".join(errors) or None)
                records.append(score_record(row, sides, error, pair.domains[at]))
                at += len(cs)
            return records

        return process


def score_record(row: dict, sides: list[dict], error: str | None, domain: str | None = None) -> dict:
    """One row of ``scores.jsonl``: each completion's figures, every variant's scores and best-of-N result."""
    rewards = {name: [response_score(name, side) for side in sides] for name in ALL_VARIANTS}
    return {
        "subset": row["subset"],
        "id": row["id"],
        "num_correct": row["num_correct"],
        "domain": domain,
        "completions": sides,
        "error": error,
        "rewards": rewards,
        "results": {name: rb2.best_of_n(scores) for name, scores in rewards.items()},
    }


def scored_rows(records: list[dict], variant: str) -> list[rb2.Row]:
    return [rb2.Row(r["subset"], r["id"], tuple(r["rewards"][variant]), r["num_correct"]) for r in records]


def build_results(records: list[dict], provenance: dict, n_bootstrap: int = 1000) -> dict:
    """The default variant's figures at the top, and the same for every variant and baseline."""
    variants = {name: rb2.summarize(scored_rows(records, name), n_bootstrap) for name in ALL_VARIANTS}
    default = variants[provenance["variant"]]
    return {
        **results_head("rewardbench2", default, records, provenance),
        "subsets": default["subsets"],
        "intervals": default["intervals"],
        "ties_terms": default["ties_terms"],
        "subset_rows": dict(sorted(Counter(r["subset"] for r in records).items())),
        "completions": sum(len(r["completions"]) for r in records),
        "variants": variants,
        "unscorable": sum(1 for r in records if r["error"]),
        "truncated": sum(1 for r in records if any(c["truncated"] for c in r["completions"])),
        "bootstrap": {"resamples": n_bootstrap, "level": 0.95, "within": "subset (Ties: prompt id)"},
        "routing": routing(records),
        "provenance": provenance,
    }


def leaderboard(results: dict) -> dict:
    """The results file the official runner saves (``results/eval-set/MODEL.json``): model, type, template and
    one score per subset; ``ref_model`` added, as the official DPO runner does for v1."""
    return {
        "model": results["model"],
        "ref_model": results["ref_model"],
        "model_type": "DPO",
        "chat_template": "tokenizer",
        **results["subsets"],
    }


def markdown(results: dict) -> str:
    cols = [s for s in rb2.SUBSETS if s in results["subsets"]] + sorted(set(results["subsets"]) - set(rb2.SUBSETS))
    lines = [
        f"# RewardBench 2: {results['model']} over {results['ref_model']}",
        "",
        f"{results['num_prompts']} rows ({results['completions']} completions) from "
        f"`{results['data']['source']}`; default variant `{results['variant']}`, score "
        f"{cell(results['accuracy'], results['intervals'].get('score'))}. Best-of-N: the chosen completion must "
        "score highest, a tie at the top earns 1/#tied (chance 0.25 for best-of-4); Ties has its own score; the "
        "score is the mean of the subsets. Intervals are 95% bootstrap, rows (Ties: prompt ids) resampled within "
        f"each subset. Unscorable rows: {results['unscorable']}; truncated: {results['truncated']}.",
        "",
        *variant_table(results["variants"], cols, "subsets"),
    ]
    if results.get("ties_terms"):
        terms = list(rb2.TIES_WEIGHTS)
        lines += [
            "",
            "Ties, term by term (weights " + ", ".join(f"{k} {w}" for k, w in rb2.TIES_WEIGHTS.items()) + "):",
            "",
            "| variant | " + " | ".join(terms) + " | Ties score |",
            "|---|" + "---|" * (len(terms) + 1),
        ]
        for name, f in results["variants"].items():
            t = f["ties_terms"]
            lines.append(
                f"| {LABELS.get(name, name)} | " + " | ".join(f"{t[k]:.3f}" for k in terms) + f" | {t['score']:.3f} |"
            )
    lines += ["", "Rows per subset: " + ", ".join(f"{s} {n}" for s, n in results["subset_rows"].items()) + "."]
    lines += ["", timing_line(results)]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    from cdr.plots import section_bars

    groups = [s for s in rb2.SUBSETS if s in results["subsets"]]
    section_bars(
        results["variants"],
        LABELS,
        path,
        f"{results['model']} over {results['ref_model']}: {results['num_prompts']} RewardBench 2 rows",
        groups=groups,
        key="subsets",
        chance=CHANCE,
        ylabel="score (best-of-N; Ties its own)",
    )


def point(records: list[dict], variant: str) -> dict[str, float]:
    return rb2.figures(rb2.units(scored_rows(records, variant)))


def paired(records_a: list[dict], records_b: list[dict], variant_a: str, variant_b: str, n: int) -> dict:
    return rb2.paired_bootstrap(scored_rows(records_a, variant_a), scored_rows(records_b, variant_b), n=n)


REWARDBENCH2 = Benchmark(
    name="rewardbench2",
    hub_id=HUB_DATASET,
    groups=rb2.SUBSETS,
    load=load_rewardbench2,
    job=EvalJobV2(),
    build_results=build_results,
    markdown=markdown,
    plot=plot,
    leaderboard=leaderboard,
    point=point,
    paired=paired,
)
