"""``cdr eval --compare RUN_A RUN_B``: A minus B between two evaluation runs, on the rows both scored.

Each run is an ``cdr eval`` output folder (results.json and scores.jsonl). The rows are matched by
(subset, id); each resample of the paired bootstrap draws the same rows for both runs, so the rows'
difficulty cancels and the interval of the difference is much narrower than two separate intervals
suggest. Either run's variant can be chosen (``variants``), so two variants of one run compare too.
"""

from __future__ import annotations

import json
from pathlib import Path

from cdr.errors import CdrError
from cdr.models import atomic_write_text
from cdr.pipelines.benchmarks import benchmark_named
from cdr.pipelines.evaluate import cell
from cdr.rewardbench import ALL_VARIANTS, LABELS


def read_run(run_dir: str | Path) -> tuple[dict, list[dict]]:
    """A finished ``cdr eval`` folder's results.json and scores.jsonl, or a one-line error naming what is missing."""
    run = Path(run_dir)
    for name in ("results.json", "scores.jsonl"):
        if not (run / name).is_file():
            raise CdrError(f"'{run}' is not a finished 'cdr eval' folder: {name} is missing")
    try:
        results = json.loads((run / "results.json").read_text(encoding="utf-8"))
        with open(run / "scores.jsonl", encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CdrError(f"'{run}' holds a damaged results.json or scores.jsonl ({exc})") from None
    return results, records


def _variant(name: str | None, results: dict, which: str) -> str:
    chosen = name or results.get("variant")
    if chosen not in ALL_VARIANTS:
        raise CdrError(
            f"variant of run {which} (--compare-variants) must be one of {', '.join(ALL_VARIANTS)}, got {chosen!r}"
        )
    return chosen


def compare_runs(
    run_a: str | Path,
    run_b: str | Path,
    output_dir: str | Path,
    *,
    variants: tuple[str | None, str | None] = (None, None),
    n_bootstrap: int = 2000,
    seed: int = 0,
) -> dict:
    """A minus B per section (or subset) and overall, with paired bootstrap intervals; writes compare.json,
    compare.md and compare.png into ``output_dir``. Returns what compare.json holds."""
    (results_a, records_a), (results_b, records_b) = read_run(run_a), read_run(run_b)
    name_a, name_b = (r.get("benchmark", "rewardbench") for r in (results_a, results_b))
    if name_a != name_b:
        raise CdrError(f"run A is a {name_a} run and run B a {name_b} run: compare runs of the same benchmark")
    benchmark = benchmark_named(name_a)
    va, vb = _variant(variants[0], results_a, "A"), _variant(variants[1], results_b, "B")
    by_key_b = {(r["subset"], r["id"]): r for r in records_b}
    common = [r for r in records_a if (r["subset"], r["id"]) in by_key_b]
    if not common:
        raise CdrError(f"runs '{run_a}' and '{run_b}' have no row in common (rows are matched by subset and id)")
    paired_b = [by_key_b[(r["subset"], r["id"])] for r in common]
    check_same_rows(run_a, run_b, [(r["subset"], r["id"]) for r in common])
    point_a, point_b = benchmark.point(common, va), benchmark.point(paired_b, vb)
    if n_bootstrap:
        difference = benchmark.paired(common, paired_b, va, vb, n_bootstrap)
    else:
        difference = {k: (point_a[k] - point_b[k], None, None) for k in point_a}
    order = [g for g in (*benchmark.groups, "score") if g in difference]
    out = {
        "benchmark": benchmark.name,
        "rows": len(common),
        "only_in_a": len(records_a) - len(common),
        "only_in_b": len(records_b) - len(common),
        "bootstrap": {"resamples": n_bootstrap, "level": 0.95, "paired": True, "seed": seed},
        "a": _side(run_a, results_a, va, point_a),
        "b": _side(run_b, results_b, vb, point_b),
        "difference": {g: list(difference[g]) for g in order},
    }
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "compare.json", json.dumps(out, indent=2))
    atomic_write_text(out_dir / "compare.md", markdown(out))
    from cdr.plots import difference_bars

    if n_bootstrap:
        difference_bars(
            {g: out["difference"][g] for g in order},
            out_dir / "compare.png",
            f"A: {out['a']['label']}\nminus B: {out['b']['label']}\n{out['rows']} rows, paired 95% intervals",
            "A minus B",
        )
    return out


def _row_texts(run: Path) -> dict[tuple[str, str], str]:
    """(subset, id) -> the row's prompt and responses as one JSON text, from the run's pinned rows.jsonl."""
    out = {}
    with open(run / "rows.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out[(row["subset"], row["id"])] = json.dumps([row.get(k) for k in ("prompt", "chosen", "rejected")])
    return out


def check_same_rows(run_a: str | Path, run_b: str | Path, keys: list[tuple[str, str]]) -> None:
    """Rows are matched by (subset, id); refuse when a matched row holds other text in the other run (two data
    sets that reuse ids). Runs without rows.jsonl (made by hand) are taken as they are."""
    a, b = Path(run_a), Path(run_b)
    if not ((a / "rows.jsonl").is_file() and (b / "rows.jsonl").is_file()):
        return
    texts_a, texts_b = _row_texts(a), _row_texts(b)
    differ = [k for k in keys if k in texts_a and k in texts_b and texts_a[k] != texts_b[k]]
    if differ:
        raise CdrError(
            f"{len(differ)} row(s) have the same (subset, id) but other text in the two runs, the first {differ[0]}: "
            "they were scored on different data"
        )


def _side(run: str | Path, results: dict, variant: str, figures: dict[str, float]) -> dict:
    label = f"{results.get('model')} over {results.get('ref_model')}, {LABELS.get(variant, variant)} ({Path(run).name})"
    return {
        "run": str(run),
        "model": results.get("model"),
        "ref_model": results.get("ref_model"),
        "variant": variant,
        "label": label,
        "figures": figures,
    }


def markdown(out: dict) -> str:
    a, b = out["a"], out["b"]
    lines = [
        f"# {out['benchmark']}: A minus B on {out['rows']} rows",
        "",
        f"- A: {a['label']}",
        f"- B: {b['label']}",
    ]
    if out["only_in_a"] or out["only_in_b"]:
        lines.append(
            f"- compared on the rows both runs scored: {out['only_in_a']} row(s) only in A and {out['only_in_b']} "
            "only in B are left out"
        )
    lines += [
        "",
        "Brackets: 95% paired bootstrap intervals (the same rows drawn for both runs, within each subset). An interval "
        "that excludes 0 is a difference these rows support.",
        "",
        "| | A | B | A minus B |",
        "|---|---|---|---|",
    ]
    for group, (diff, low, high) in out["difference"].items():
        delta = f"{diff:+.3f} [{low:+.3f}, {high:+.3f}]" if low is not None else f"{diff:+.3f}"
        lines.append(
            f"| {group} | {cell(a['figures'].get(group), None)} | {cell(b['figures'].get(group), None)} | {delta} |"
        )
    return "\n".join(lines) + "\n"
