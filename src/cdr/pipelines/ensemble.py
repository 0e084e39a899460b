"""``cdr eval --ensemble RUN_A RUN_B ...``: an ensemble of pairs, evaluated from runs already scored (#22, idea 2).

Each run is a ``cdr eval`` folder of one pair. The ensemble's reward of a response is the weighted mean of the
pairs' rewards, per variant: with ``mean_diff`` and one strong model shared by every pair, that is the strong
model's per-token mean minus the weighted mean of the weak models' per-token means, the "mean of per-token
log-prob means on each side" of several references. No model runs: the pairs' log-probs were computed (and
cached) by their own runs, so trying weights costs nothing. The result is an ordinary ``cdr eval`` folder
(results.json, results.md, sections.png, scores.jsonl), which ``--compare`` reads like any other.

The single-model and length baselines in the report are those of the first run (its strong and weak models).
"""

from __future__ import annotations

import json
from pathlib import Path

from cdr.config import weights_from
from cdr.errors import CdrError
from cdr.models import atomic_write_text
from cdr.pipelines.compare import check_same_rows, read_run
from cdr.pipelines.evaluate import REWARDBENCH, Report, Selection, combined_record, reading, write_results


def parse_weights(text: str | None, runs: int) -> list[float]:
    """``--ensemble-weights 1,0.5``: one non-negative number per run, not all zero (default: equal)."""
    return weights_from(text, runs, "--ensemble-weights", "run")


def ensemble_runs(
    runs: list[str | Path],
    output_dir: str | Path,
    *,
    weights: list[float] | None = None,
    n_bootstrap: int = 1000,
) -> dict:
    """Combine the pairs' rewards row by row on the rows every run scored; write a ``cdr eval`` folder."""
    if len(runs) < 2:
        raise CdrError(f"--ensemble takes two or more run folders, got {len(runs)}")
    weights = weights or parse_weights(None, len(runs))
    loaded = [read_run(run) for run in runs]
    for run, (results, _) in zip(runs, loaded):
        benchmark = results.get("benchmark", "rewardbench")
        if benchmark != "rewardbench":
            raise CdrError(f"--ensemble combines RewardBench (v1) runs; '{run}' is a {benchmark} run")
    keyed = [{(r["subset"], r["id"]): r for r in records} for _, records in loaded]
    first_records = loaded[0][1]
    common = [(r["subset"], r["id"]) for r in first_records if all((r["subset"], r["id"]) in k for k in keyed)]
    if not common:
        raise CdrError("the runs have no row in common (rows are matched by subset and id)")
    for run in runs[1:]:
        check_same_rows(runs[0], run, common)
    records = [combined_record([k[key] for k in keyed], weights) for key in common]
    provenance = ensemble_provenance(runs, [results for results, _ in loaded], weights)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "scores.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    rows_file = Path(runs[0]) / "rows.jsonl"
    rows_text = rows_file.read_text(encoding="utf-8") if rows_file.is_file() else ""
    report = Report(
        source=f"ensemble of {len(runs)} runs",
        rows_text=rows_text,
        selection=Selection(),
        problems=[],
        timing={"load_s": 0.0, "rows_this_run": 0, "scoring_s_this_run": 0.0, "resumed_after_row": None},
        n_bootstrap=n_bootstrap,
    )
    return write_results(out_dir, records, provenance, report, REWARDBENCH)


def ensemble_provenance(runs: list[str | Path], results: list[dict], weights: list[float]) -> dict:
    members = [r.get("provenance", {}) for r in results]
    variants = {m.get("variant") for m in members}
    if len(variants) > 1:
        raise CdrError(f"the runs were scored with different default variants ({', '.join(map(str, variants))})")
    strongs = list(dict.fromkeys(str(m.get("strong")) for m in members))
    weaks = [f"{m.get('weak')}" + reading(m) for m in members]
    return {
        "strong": " + ".join(strongs),
        "weak": " + ".join(f"{w:.2f} x {name}" for w, name in zip(weights, weaks)),
        "variant": members[0].get("variant"),
        "ensemble": {"runs": [str(r) for r in runs], "weights": weights, "members": members},
    }
