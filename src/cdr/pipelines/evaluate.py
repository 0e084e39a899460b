"""``cdr eval``: a reward on RewardBench with the official protocol, every variant and baseline in one run.

Rows (``prompt, chosen, rejected, subset, id``) come from a local JSONL/Parquet file, the packaged mini set
(``mini``) or the hub (``allenai/reward-bench``, online users only). They are validated, filtered
(``subsets``), sampled (stratified ``sample``) and cut (``limit``) up front, and the selection is written
to ``DIR/rows.jsonl``; scoring then goes through the resumable row loop into ``DIR/scores.jsonl``. Each
model scores each response once; the ratio variants, the single-model scores and the length heuristics
are all derived from those numbers, so they are compared on exactly the same log-probs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cdr.conversation import Conversation, ConversationError, validate_prompt
from cdr.data import RawRow, iter_rows
from cdr.errors import CdrError, RowError
from cdr.models import HUB_ID, atomic_write_text
from cdr.output import encode_lines, read_shards, write_if_changed
from cdr.pipelines.runner import ChunkContext, RowReports, run_job
from cdr.reward import DensityRatio, PairLogprobs, ResponseLogprobs
from cdr.rewardbench import (
    ALL_VARIANTS,
    LABELS,
    RATIO_VARIANTS,
    SECTIONS,
    SUBSET_MAPPING,
    is_correct,
    paired_bootstrap,
    response_score,
    score,
    section_scores,
    subset_accuracy,
    summarize,
)

logger = logging.getLogger(__name__)

MINI = "mini"  # the packaged 230-row stratified sample (10 rows per subset)
REQUIRED = ("prompt", "chosen", "rejected", "subset", "id")
KNOWN_SUBSETS = {s for subsets in SUBSET_MAPPING.values() for s in subsets}


@dataclass(frozen=True)
class Selection:
    """Which rows to evaluate: ``subsets`` filter first, then a stratified ``sample``, then the first ``limit``."""

    subsets: tuple[str, ...] | None = None
    sample: int | None = None
    limit: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sample", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise CdrError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True)
class Benchmark:
    """What differs between RewardBench versions; ``cdr eval`` runs either through the same row loop.

    ``load`` checks and selects rows, ``job`` scores a chunk of them (any engine), ``build_results`` turns the
    scored records into figures, ``markdown``/``plot``/``leaderboard`` write them, ``paired`` gives A minus B
    on the same rows (``cdr eval --compare``) and ``point`` one variant's figures, ``groups`` names the sections
    or subsets in report order."""

    name: str
    hub_id: str
    groups: tuple[str, ...]
    load: Callable[..., tuple[list[dict], list[dict]]]
    job: Any
    build_results: Callable[[list[dict], dict, int], dict]
    markdown: Callable[[dict], str]
    plot: Callable[[dict, Path], None]
    leaderboard: Callable[[dict], dict]
    point: Callable[[list[dict], str], dict[str, float]]
    paired: Callable[[list[dict], list[dict], str, str, int], dict]


def mini_path() -> Path:
    return Path(str(resources.files("cdr") / "data" / "rewardbench_mini.jsonl"))


def _raw_rows(source: str, packaged: dict[str, Path], split: str) -> Iterator[RawRow]:
    if source in packaged:
        yield from iter_rows(packaged[source])
    elif Path(source).exists():
        yield from iter_rows(source)
    elif HUB_ID.match(source):
        try:
            import datasets

            ds = datasets.load_dataset(source, split=split)
        except Exception as exc:  # the hub's own errors are many; all mean "could not get it"
            raise CdrError(
                f"could not load '{source}' from the Hugging Face hub ({type(exc).__name__}: {exc}); "
                f"offline, pass a local JSONL/Parquet file or {' or '.join(repr(p) for p in packaged)}"
            ) from None
        for i, row in enumerate(ds):
            yield RawRow(i, f"row {i + 1}", dict(row))
    else:
        names = " nor ".join(repr(p) for p in packaged)
        raise CdrError(f"'{source}' is neither a file nor {names} nor a hub dataset id (owner/name)")


def check_row(raw: RawRow) -> dict[str, Any]:
    """A RewardBench row with its fields checked, or a RowError naming the field."""
    if raw.error is not None:
        raise raw.error
    data = raw.data or {}
    for name in REQUIRED:
        if data.get(name) is None or data.get(name) == "":
            raise RowError(
                raw.location, name, f"missing: a RewardBench row needs {', '.join(REQUIRED)}", "missing field"
            )
    try:
        prompt = [m.as_dict() for m in validate_prompt(data["prompt"], "prompt")]
        for name in ("chosen", "rejected"):
            Conversation.from_prompt_response(prompt, data[name], "prompt", name)
    except ConversationError as exc:
        raise RowError.from_conversation_error(raw.location, exc) from None
    if not isinstance(data["subset"], str):
        raise RowError(
            raw.location,
            "subset",
            f"expected a subset name (a string), got {type(data['subset']).__name__}",
            "wrong type",
        )
    return {
        "subset": data["subset"],
        "id": str(data["id"]),
        "prompt": prompt,
        "chosen": data["chosen"],
        "rejected": data["rejected"],
        "source": raw.location,
    }


def stratified_sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """About ``n`` rows, each subset in proportion to its size (at least one each), in file order."""
    if n >= len(rows):
        return rows
    by_subset: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_subset[row["subset"]].append(i)
    exact = {s: n * len(ix) / len(rows) for s, ix in by_subset.items()}
    quota = {s: max(1, int(q)) for s, q in exact.items()}
    for s in sorted(exact, key=lambda s: exact[s] - int(exact[s]), reverse=True):  # largest remainders
        if sum(quota.values()) >= n:
            break
        quota[s] = min(len(by_subset[s]), quota[s] + 1)
    keep: set[int] = set()
    for s, ix in sorted(by_subset.items()):
        keep.update(random.Random(f"{seed}:{s}").sample(ix, min(len(ix), quota[s])))
    return [rows[i] for i in sorted(keep)]


def select_rows(
    source: str,
    check: Callable[[RawRow], dict[str, Any]],
    selection: Selection,
    on_error: str,
    log: Callable[[str], None] | None,
    *,
    packaged: dict[str, Path],
    split: str,
) -> tuple[list[dict], list[dict]]:
    """Rows checked by ``check`` and keyed by (subset, id), then selected; and the reports of the rows left
    out as malformed (``on_error='fail'`` raises). For either RewardBench version."""
    rows, seen = [], {}
    reports = RowReports(on_error, say=log or logger.warning)
    for raw in _raw_rows(source, packaged, split):
        try:
            row = check(raw)
            key = (row["subset"], row["id"])
            if key in seen:
                raise RowError(
                    raw.location, "id", f"duplicate (subset, id) = {key}, first at {seen[key]}", "duplicate key"
                )
            seen[key] = raw.location
        except RowError as err:
            reports.report(err)
            continue
        rows.append(row)
    problems = reports.errors
    if selection.subsets:
        unknown = sorted(set(selection.subsets) - {r["subset"] for r in rows})
        if unknown:
            raise CdrError(f"subset(s) not in the data: {', '.join(unknown)}")
        rows = [r for r in rows if r["subset"] in selection.subsets]
    if selection.sample:
        rows = stratified_sample(rows, selection.sample, selection.seed)
    if selection.limit:
        rows = rows[: selection.limit]
    if not rows:
        raise CdrError(f"no rows to evaluate in '{source}'")
    return rows, problems


def load_rewardbench(
    source: str, selection: Selection = Selection(), on_error: str = "skip", log: Callable[[str], None] | None = None
) -> tuple[list[dict], list[dict]]:
    """Checked, selected rows and the reports of the rows left out as malformed (``on_error='fail'`` raises).

    Rows are keyed by (subset, id): the id alone is not unique (3692 is in two subsets)."""
    rows, problems = select_rows(
        source, check_row, selection, on_error, log, packaged={MINI: mini_path()}, split="filtered"
    )
    outside = sorted({r["subset"] for r in rows} - KNOWN_SUBSETS)
    if outside:
        (log or logger.info)(
            f"note: subsets outside RewardBench's sections are reported per subset only: {', '.join(outside)}"
        )
    return rows, problems


def conversations(row: dict) -> tuple[Conversation, Conversation]:
    return (
        Conversation.from_prompt_response(row["prompt"], row["chosen"]),
        Conversation.from_prompt_response(row["prompt"], row["rejected"]),
    )


def side_record(text: str, strong: ResponseLogprobs | Exception, weak: ResponseLogprobs | Exception) -> dict:
    ok = not isinstance(strong, Exception) and not isinstance(weak, Exception)
    return {
        "chars": len(text),
        "strong_logprob": strong.total if ok else None,
        "strong_tokens": strong.n_tokens if ok else None,
        "weak_logprob": weak.total if ok else None,
        "weak_tokens": weak.n_tokens if ok else None,
        "truncated": bool(ok and (strong.truncated or weak.truncated)),
    }


def count_outcome(ctx: ChunkContext, source: str, error: str | None) -> str | None:
    """Count a row as scored, or as unscorable with a note naming why; returns that reason (None: scored)."""
    if not error:
        ctx.counts["scored"] += 1
        return None
    ctx.counts["unscorable"] += 1
    ctx.note(source, "unscorable", error)
    return error


def score_record(row: dict, chosen: dict, rejected: dict, error: str | None, domain: str | None = None) -> dict:
    rewards = {name: [response_score(name, chosen), response_score(name, rejected)] for name in ALL_VARIANTS}
    return {
        "subset": row["subset"],
        "id": row["id"],
        "domain": domain,
        "chosen": chosen,
        "rejected": rejected,
        "error": error,
        "rewards": rewards,
        "correct": {name: is_correct(*pair) for name, pair in rewards.items()},
    }


@dataclass(frozen=True)
class EvalJob:
    """What ``cdr eval`` does to a chunk of selected rows (``rows.jsonl``), for any engine (see ``ScoreJob``)."""

    summary_order = ("scored", "unscorable")
    desc = "evaluating"

    def key(self, provenance: dict[str, Any]) -> dict[str, Any]:
        """What identifies a run for resume: the job's options and what produces the rewards."""
        return {"command": "eval", "provenance": provenance}

    def processor(self, reward: DensityRatio):
        def process(chunk: list[RawRow], ctx: ChunkContext) -> list[dict]:
            picked = [raw.data for raw in chunk]
            convs = [c for row in picked for c in conversations(row)]
            pairs = reward.pairs_logprobs(
                convs, on_progress=lambda n: ctx.advance(n / 4), rows=[row for row in picked for _ in range(2)]
            )
            records = []
            for i, row in enumerate(picked):
                members = [
                    pair_record(row, pair, i, f"pair {n}: " if len(pairs) > 1 else "")
                    for n, pair in enumerate(pairs, 1)
                ]
                record = members[0] if len(members) == 1 else combined_record(members, reward.pairs_weights)
                count_outcome(ctx, row["source"], record["error"])
                records.append(record)
            return records

        return process


def pair_record(row: dict, pair: PairLogprobs, i: int, label: str = "") -> dict:
    """Row ``i``'s record from one pair's log-probs (its chosen response at 2i, its rejected one at 2i + 1)."""
    errors = [
        f"{label}{role} {side}: {x}"
        for role, xs in (("strong", pair.strong), ("weak", pair.weak))
        for side, x in (("chosen", xs[2 * i]), ("rejected", xs[2 * i + 1]))
        if isinstance(x, Exception)
    ]
    chosen = side_record(row["chosen"], pair.strong[2 * i], pair.weak[2 * i])
    rejected = side_record(row["rejected"], pair.strong[2 * i + 1], pair.weak[2 * i + 1])
    return score_record(row, chosen, rejected, "; ".join(errors) or None, pair.domains[2 * i])


def weighted_rewards(pairs: list[list[float | None]], weights: list[float]) -> list[float | None]:
    """The ensemble's [chosen, rejected] rewards: the weighted mean of the pairs' own, None where any pair has None."""
    return [None if any(p[i] is None for p in pairs) else sum(w * p[i] for w, p in zip(weights, pairs)) for i in (0, 1)]


def combined_record(members: list[dict], weights: list[float]) -> dict:
    """One row of the ensemble: each ratio variant the weighted mean of the members' rewards (None if any member
    could not score the row); the baselines and the response sizes are the first member's. Each member's own
    ratio rewards stay in ``pair_rewards`` (in --extra-pairs order), so one run of several pairs also answers how
    each pair, or any other weighting of them, would have done on the same rows."""
    first = members[0]
    errors = [m["error"] for m in members if m.get("error")]
    rewards = {}
    for name in ALL_VARIANTS:
        if name not in RATIO_VARIANTS:
            rewards[name] = first["rewards"][name]
            continue
        rewards[name] = weighted_rewards([m["rewards"][name] for m in members], weights)
    side = {s: {**first[s], "truncated": any(m[s]["truncated"] for m in members)} for s in ("chosen", "rejected")}
    return {
        "subset": first["subset"],
        "id": first["id"],
        "domain": first.get("domain"),
        **side,
        "error": "; ".join(errors) or None,
        "rewards": rewards,
        "correct": {name: is_correct(*pair) for name, pair in rewards.items()},
        "pair_rewards": [{name: m["rewards"][name] for name in RATIO_VARIANTS} for m in members],
    }


def evaluate(
    source: str,
    output_dir: str | Path,
    reward: DensityRatio,
    *,
    benchmark: Benchmark | None = None,
    selection: Selection = Selection(),
    on_error: str = "skip",
    chunk_rows: int = 64,
    overwrite: bool = False,
    progress: bool = True,
    n_bootstrap: int = 1000,
    load_seconds: float | None = None,
    loaded: tuple[list[dict], list[dict]] | None = None,
) -> dict:
    """Score the selected rows (resuming an interrupted run of the same command) and write results.json,
    leaderboard.json, scores.jsonl, results.md and sections.png into ``output_dir``. Returns the results.
    ``benchmark``: RewardBench v1 (the default) or ``evaluate_v2.REWARDBENCH2``."""
    benchmark = benchmark or REWARDBENCH
    out_dir = Path(output_dir)
    problems, rows_text = _prepare_rows(out_dir, source, selection, on_error, loaded, benchmark)
    provenance = reward.provenance

    start = time.time()
    summary = run_job(
        benchmark.job,
        out_dir / "rows.jsonl",
        out_dir / "scores.jsonl",
        reward,
        chunk_rows=chunk_rows,
        overwrite=overwrite,
        progress=progress,
    )
    records = [json.loads(line) for line in open(out_dir / "scores.jsonl", encoding="utf-8")]
    timing = {
        "load_s": load_seconds,
        "scoring_s_this_run": round(time.time() - start, 2),
        "rows_this_run": summary.rows - summary.resumed_from,
        "resumed_after_row": summary.resumed_from,
    }
    if reward.cache is not None:
        timing["cache"] = {"reused": reward.cache.hits, "computed": reward.cache.misses}
    report = Report(source, rows_text, selection, problems, timing, n_bootstrap)
    return write_results(out_dir, records, provenance, report, benchmark)


def evaluate_on_ray(
    source: str,
    output_dir: str | Path,
    config,
    options,
    *,
    benchmark: Benchmark | None = None,
    selection: Selection = Selection(),
    on_error: str = "skip",
    overwrite: bool = False,
    progress: bool = True,
    n_bootstrap: int = 1000,
    loaded: tuple[list[dict], list[dict]] | None = None,
) -> dict:
    """``evaluate`` with the rows scored by a Ray actor pool (``options``: RayOptions) into ``DIR/shards/``;
    the same outputs, plus the shards."""
    from cdr.pipelines.ray_runner import run_identity, run_provenance, run_rows_ray

    benchmark = benchmark or REWARDBENCH
    out_dir = Path(output_dir)
    problems, rows_text = _prepare_rows(out_dir, source, selection, on_error, loaded, benchmark)
    job = benchmark.job
    start = time.time()
    summary = run_rows_ray(
        out_dir / "rows.jsonl",
        out_dir / "shards",
        job,
        config,
        options,
        key=job.key(run_identity(config)),
        on_error=on_error,
        overwrite=overwrite,
        progress=progress,
    )
    records = read_shards(out_dir / "shards")
    atomic_write_text(out_dir / "scores.jsonl", encode_lines(records).decode("utf-8"))  # strict JSON: NaN -> null
    timing = {
        "engine": "ray",
        "num_actors": options.num_actors,
        "scoring_s_this_run": round(time.time() - start, 2),
        "rows_this_run": summary.rows - summary.resumed_from,
        "resumed_after_row": summary.resumed_from,
    }
    report = Report(source, rows_text, selection, problems, timing, n_bootstrap)
    return write_results(out_dir, records, run_provenance(out_dir / "shards"), report, benchmark)


def _prepare_rows(
    out_dir: Path,
    source: str,
    selection: Selection,
    on_error: str,
    loaded: tuple[list[dict], list[dict]] | None,
    benchmark: Benchmark,
) -> tuple[list[dict], str]:
    """Load and select the rows (unless ``loaded`` already holds them) and pin them in ``DIR/rows.jsonl``, which every
    engine then reads; returns the skipped-row problems and the file's text."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, problems = loaded or benchmark.load(source, selection, on_error)
    rows_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    write_if_changed(out_dir / "rows.jsonl", rows_text)
    return problems, rows_text


@dataclass(frozen=True)
class Report:
    """What a run's results record beside the figures: the data, the skipped rows, the timing."""

    source: str
    rows_text: str
    selection: Selection
    problems: list[dict]
    timing: dict
    n_bootstrap: int


def write_results(out_dir: Path, records: list[dict], provenance: dict, report: Report, benchmark: Benchmark) -> dict:
    results = benchmark.build_results(records, provenance, report.n_bootstrap)
    results["data"] = {
        "source": report.source,
        "sha256": _sha256_text(report.rows_text),
        "rows": report.rows_text.count("\n"),
        "selection": report.selection.__dict__,
        "skipped_rows": report.problems,
    }
    results["timing"] = report.timing
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(
        out_dir / "leaderboard.json", json.dumps(benchmark.leaderboard(results), indent=4, sort_keys=True)
    )
    atomic_write_text(out_dir / "results.md", benchmark.markdown(results))
    benchmark.plot(results, out_dir / "sections.png")
    return results


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pair_provenances(provenance: dict) -> list[dict]:
    """The provenance of each pair of an ensemble (--extra-pairs), the first pair first; one pair's is itself."""
    return [provenance, *provenance.get("extra_pairs", [])]


def weak_label(provenance: dict) -> str:
    """The weak side in words: the model ('gemma-3-270m'); for an ensemble each pair's weight, weak model and how
    it was read when not whole ('0.50 x gemma-3-270m + 0.50 x smollm2-135m-instruct (no prompt)')."""
    pairs = pair_provenances(provenance)
    if len(pairs) == 1:
        return provenance["weak"]  # as reward-bench writes its ref_model
    names = [f"{p.get('weak')}{reading(p)}" for p in pairs]
    return " + ".join(f"{w:.2f} x {name}" for w, name in zip(provenance["pair_weights"], names))


def reading(provenance: dict) -> str:
    """How a pair's weak model was read, when not whole: ' (exit layer 8)', ' (no prompt)'."""
    notes = []
    if provenance.get("weak_exit_layer") is not None:
        notes.append(f"exit layer {provenance['weak_exit_layer']}")
    if provenance.get("weak_prompt") == "empty":
        notes.append("no prompt")
    return f" ({', '.join(notes)})" if notes else ""


def results_head(benchmark: str, default: dict, records: list[dict], provenance: dict) -> dict:
    """The fields every results.json starts with, either version: reward-bench's names for the pair, the default
    variant and its score."""
    return {
        "benchmark": benchmark,
        "accuracy": default["accuracy"],
        "num_prompts": len(records),
        "model": " + ".join(dict.fromkeys(str(p.get("strong")) for p in pair_provenances(provenance))),
        "ref_model": weak_label(provenance),
        "variant": provenance["variant"],
    }


def build_results(records: list[dict], provenance: dict, n_bootstrap: int = 1000) -> dict:
    """reward-bench's results shape for the default variant, plus the same figures for every variant."""
    variants = {
        name: summarize([(r["subset"], r["correct"][name]) for r in records], n_bootstrap) for name in ALL_VARIANTS
    }
    default = variants[provenance["variant"]]
    return {
        **results_head("rewardbench", default, records, provenance),
        "sections": default["sections"],
        "intervals": default["intervals"],
        "extra_results": default["extra_results"],
        "subset_rows": dict(sorted(Counter(r["subset"] for r in records).items())),
        "variants": variants,
        "unscorable": sum(1 for r in records if r["error"]),
        "truncated": sum(1 for r in records if r["chosen"]["truncated"] or r["rejected"]["truncated"]),
        "bootstrap": {"resamples": n_bootstrap, "level": 0.95, "within": "subset"},
        "routing": routing(records),
        "provenance": provenance,
    }


def routing(records: list[dict]) -> dict | None:
    """With a recipe: the rows routed to each domain, per RewardBench section (the router's confusion matrix
    against the sections)."""
    if not any(r.get("domain") for r in records):
        return None
    section_of = {s: name for name, subsets in SUBSET_MAPPING.items() for s in subsets}
    matrix: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        matrix[section_of.get(r["subset"], r["subset"])][r.get("domain") or "none"] += 1
    return {
        "domains": dict(Counter(r.get("domain") or "none" for r in records)),
        "by_section": {section: dict(counts) for section, counts in matrix.items()},
    }


def cell(value: float | None, interval: list[float] | None) -> str:
    """A figure with its interval, for markdown tables."""
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def variant_table(variants: dict, cols: list[str], key: str) -> list[str]:
    """A markdown table: one line per variant, its figure per section (``key``: sections or subsets) and score."""
    lines = ["| variant | " + " | ".join(cols) + " | score |", "|---|" + "---|" * (len(cols) + 1)]
    for name, f in variants.items():
        cells = [cell(f[key].get(c), f["intervals"].get(c)) for c in cols]
        score_cell = cell(f["accuracy"], f["intervals"].get("score"))
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + f" | {score_cell} |")
    return lines


def timing_line(results: dict) -> str:
    t = results.get("timing", {})
    return (
        f"Model load {t.get('load_s') or 0:.1f} s; this invocation scored {t.get('rows_this_run')} rows in "
        f"{t.get('scoring_s_this_run')} s (resumed after row {t.get('resumed_after_row')})."
    )


def markdown(results: dict) -> str:
    cols = [s for s in SECTIONS if s in results["sections"]]
    lines = [
        f"# RewardBench: {results['model']} over {results['ref_model']}",
        "",
        f"{results['num_prompts']} rows from `{results['data']['source']}`; default variant `{results['variant']}`, "
        f"score {cell(results['accuracy'], results['intervals'].get('score'))}. Ties count as wrong; sections are "
        "example-count weighted (Reasoning = math-prm and hep-* half each); intervals are 95% bootstrap, rows "
        "resampled "
        f"within each subset. Unscorable rows: {results['unscorable']}; truncated: {results['truncated']}.",
        "",
        *variant_table(results["variants"], cols, "sections"),
    ]
    names = list(results["variants"])
    lines += [
        "",
        "Per subset (accuracy):",
        "",
        "| subset | rows | " + " | ".join(LABELS.get(n, n) for n in names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    counts = results.get("subset_rows", {})
    for subset in results["extra_results"]:
        cells = [f"{results['variants'][n]['extra_results'].get(subset, float('nan')):.3f}" for n in names]
        lines.append(f"| {subset} | {counts.get(subset, '')} | " + " | ".join(cells) + " |")
    if results.get("routing"):
        domains = sorted(results["routing"]["domains"])
        lines += [
            "",
            f"Routing (recipe `{results['provenance'].get('recipe')}`, router "
            f"`{results['provenance'].get('router')}`): rows per section and domain.",
            "",
            "| section | " + " | ".join(domains) + " |",
            "|---|" + "---|" * len(domains),
        ]
        for section, counts in results["routing"]["by_section"].items():
            lines.append(f"| {section} | " + " | ".join(str(counts.get(d, 0)) for d in domains) + " |")
    lines += ["", timing_line(results)]
    return "\n".join(lines) + "\n"


def leaderboard(results: dict) -> dict:
    """The results file the official DPO runner saves (``results/eval-set/MODEL.json``): model, reference model,
    type, template and each subset's accuracy, from which the leaderboard computes the sections."""
    return {
        "model": results["model"],
        "ref_model": results["ref_model"],
        "model_type": "DPO",
        "chat_template": "tokenizer",
        **results["extra_results"],
    }


def plot(results: dict, path: Path) -> None:
    from cdr.plots import section_bars

    section_bars(
        results["variants"],
        LABELS,
        path,
        f"{results['model']} over {results['ref_model']}: {results['num_prompts']} RewardBench rows",
    )


def point(records: list[dict], variant: str) -> dict[str, float]:
    sections = section_scores(subset_accuracy([(r["subset"], r["correct"][variant]) for r in records]))
    return sections | {"score": score(sections)}


def paired(records_a: list[dict], records_b: list[dict], variant_a: str, variant_b: str, n: int) -> dict:
    a = [(r["subset"], r["correct"][variant_a]) for r in records_a]
    b = [(r["subset"], r["correct"][variant_b]) for r in records_b]
    return paired_bootstrap(a, b, n=n)


REWARDBENCH = Benchmark(
    name="rewardbench",
    hub_id="allenai/reward-bench",
    groups=SECTIONS,
    load=load_rewardbench,
    job=EvalJob(),
    build_results=build_results,
    markdown=markdown,
    plot=plot,
    leaderboard=leaderboard,
    point=point,
    paired=paired,
)
