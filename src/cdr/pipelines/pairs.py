"""``cdr pairs``: which (strong, weak) pair makes the best reward? N models cost N passes, not N^2.

Under the ``own`` rendering a model's log-prob of a response does not depend on the model it is paired
with, so each model scores every response once and every ordered pair's reward is a difference of two
stored numbers. Each model's pass goes through the log-prob cache slice by slice, so an interrupted run
resumes where it stopped.

The report: the pair x section accuracy matrix, each model alone, the correlation between a pair's
"gap" (strong's quality minus weak's: their single-model scores, or quality numbers the user gives) and
the pair's score, and the recommended pair.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cdr.config import RewardConfig
from cdr.errors import CdrError
from cdr.models import atomic_write_text, resolve_model
from cdr.pipelines.evaluate import Selection, cell, conversations, load_rewardbench
from cdr.reward import ModelScorer, combine, open_cache
from cdr.rewardbench import SECTIONS, is_correct, summarize

logger = logging.getLogger(__name__)


def model_pass(name: str, config: RewardConfig, convs, cache, progress: bool) -> dict[str, Any]:
    """One model's summed log-prob and token count for every response (None where it cannot score it)."""
    start = time.time()
    scorer = ModelScorer(resolve_model(name), config.backend, config, cache)
    load_s = time.time() - start
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(convs), unit="resp", desc=name, dynamic_ncols=True, file=sys.stderr)
    start = time.time()
    try:
        results = scorer.logprobs(convs, scorer.renderer, config.include_eot, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    info = {
        "fingerprint": scorer.fingerprint,
        "backend": scorer.backend.name,
        "precision": scorer.backend.precision,
        "template": scorer.renderer.description,
        "load_s": round(load_s, 2),
        "scoring_s": round(time.time() - start, 2),
        "logprob": [None if isinstance(r, Exception) else r.total for r in results],
        "tokens": [None if isinstance(r, Exception) else r.n_tokens for r in results],
    }
    del scorer
    gc.collect()
    return info


def single_model_name(variant: str) -> str:
    """The single-model score that matches a ratio variant's units: per-token for mean/mean_diff."""
    return "sum" if variant == "sum" else "mean"


def compare_pairs(
    source: str,
    models: Sequence[str],
    output_dir: str | Path,
    config: RewardConfig | None = None,
    *,
    selection: Selection | None = None,
    quality: dict[str, float] | None = None,
    progress: bool = True,
    n_bootstrap: int = 1000,
) -> dict[str, Any]:
    """Score every model once on the RewardBench rows of ``source`` and compare every ordered model pair;
    writes results.json, pairs.md, logprobs.jsonl, heatmap.png and gap.png into ``output_dir``."""
    config, selection = config or RewardConfig(), selection or Selection()
    _check_request(models, config, quality)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, problems = load_rewardbench(source, selection)
    convs = [c for row in rows for c in conversations(row)]
    cache = open_cache(config.cache)
    if cache is None:
        logger.info("note: with the log-prob cache off an interrupted run starts again from the first model")
    passes = {name: model_pass(name, config, convs, cache, progress) for name in models}
    scores = PassScores(rows, passes, config.variant, n_bootstrap)
    singles = {name: scores.single_model(name) for name in models}
    pairs = {
        f"{strong} / {weak}": scores.model_pair(strong, weak) for strong in models for weak in models if strong != weak
    }
    gap_source = "user-given quality" if quality else f"single-model score ({scores.single_variant} log-prob)"
    model_quality = quality or {name: singles[name]["accuracy"] for name in models}
    for p in pairs.values():
        p["gap"] = model_quality[p["strong"]] - model_quality[p["weak"]]
    gaps, accuracies = [p["gap"] for p in pairs.values()], [p["accuracy"] for p in pairs.values()]
    results = {
        "data": {"source": source, "rows": len(rows), "selection": selection.__dict__, "skipped_rows": problems},
        "variant": config.variant,
        "models": {
            name: {k: v for k, v in passes[name].items() if k not in ("logprob", "tokens")}
            | {
                "single_model": singles[name],
                "quality": model_quality[name],
                "unscorable": sum(1 for x in passes[name]["logprob"] if x is None),
            }
            for name in models
        },
        "pairs": pairs,
        "gap": {
            "source": gap_source,
            "pearson": _corr(gaps, accuracies),
            "spearman": _corr(_ranks(gaps), _ranks(accuracies)),
            "n_pairs": len(pairs),
        },
        "recommended": _recommended(pairs),
        "passes": len(models),
    }
    _write_outputs(out_dir, results, rows, passes, list(models))
    return results


def _check_request(models: Sequence[str], config: RewardConfig, quality: dict[str, float] | None) -> None:
    """Everything that can be wrong with the request, before any model is loaded."""
    if len(models) < 2 or len(set(models)) != len(models):
        raise CdrError(f"need at least two different models, got {', '.join(models) or 'none'}")
    if config.rendering != "own":
        raise CdrError(
            "cdr pairs derives model pairs by differencing, which needs rendering 'own' "
            "(under 'shared' a model's log-probs depend on its partner's template)"
        )
    missing = sorted(set(quality or {}) - set(models))
    if missing:
        raise CdrError(f"--quality names model(s) not in --models: {', '.join(missing)}")
    if quality and set(quality) != set(models):
        raise CdrError(f"--quality must give a number for every model ({', '.join(models)})")
    for name in models:
        resolve_model(name)  # fail before any scoring on a model that is not there


class PassScores:
    """RewardBench accuracy of one model alone or of a model pair, from the models' stored passes: response
    ``2 * i`` is row i's chosen answer, ``2 * i + 1`` its rejected one."""

    def __init__(self, rows: list[dict], passes: dict[str, dict], variant: str, n_bootstrap: int):
        self.rows, self.passes, self.variant, self.n_bootstrap = rows, passes, variant, n_bootstrap
        self.single_variant = single_model_name(variant)

    def _side(self, name: str, k: int) -> tuple[float | None, int | None]:
        return self.passes[name]["logprob"][k], self.passes[name]["tokens"][k]

    def _summary(self, reward_of: Callable[[int], float | None]) -> dict[str, Any]:
        correct = [
            (row["subset"], is_correct(reward_of(2 * i), reward_of(2 * i + 1))) for i, row in enumerate(self.rows)
        ]
        return summarize(correct, self.n_bootstrap)

    def single_model(self, name: str) -> dict[str, Any]:
        def alone(k: int) -> float | None:
            lp, n = self._side(name, k)
            return None if lp is None else (lp if self.single_variant == "sum" else lp / n)

        return self._summary(alone)

    def model_pair(self, strong: str, weak: str) -> dict[str, Any]:
        def ratio(k: int) -> float | None:
            (s, sn), (w, wn) = self._side(strong, k), self._side(weak, k)
            return None if s is None or w is None else float(combine(self.variant, s, sn, w, wn))

        return {"strong": strong, "weak": weak, **self._summary(ratio)}


def _recommended(pairs: dict[str, dict]) -> dict[str, Any]:
    ranked = sorted(pairs, key=lambda k: pairs[k]["accuracy"], reverse=True)
    best, runner_up = pairs[ranked[0]], pairs[ranked[1]] if len(ranked) > 1 else None
    within_noise = bool(runner_up and runner_up["accuracy"] >= best["intervals"]["score"][0])
    return {
        "strong": best["strong"],
        "weak": best["weak"],
        "score": best["accuracy"],
        "interval": best["intervals"].get("score"),
        "runner_up": ranked[1] if runner_up else None,
        "runner_up_within_interval": within_noise,
    }


def _write_outputs(out_dir: Path, results: dict, rows: list[dict], passes: dict, models: list[str]) -> None:
    from cdr.plots import gap_scatter, pair_heatmap

    _write_logprobs(out_dir / "logprobs.jsonl", rows, passes)
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out_dir / "pairs.md", markdown(results))
    pairs, variant, gap = results["pairs"], results["variant"], results["gap"]
    matrix = [[pairs[f"{s} / {w}"]["accuracy"] if s != w else None for w in models] for s in models]
    pair_heatmap(models, matrix, out_dir / "heatmap.png", f"pair score ({variant}), {len(rows)} RewardBench rows")
    title = (
        f"pair score vs gap (Pearson r = {gap['pearson']:.2f})" if gap["pearson"] is not None else "pair score vs gap"
    )
    gap_scatter(
        [(k.replace(" / ", "/"), p["gap"], p["accuracy"]) for k, p in pairs.items()],
        out_dir / "gap.png",
        f"gap: strong - weak, {gap['source']}",
        title,
    )


def _corr(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _ranks(values: Sequence[float]) -> list[float]:
    order = np.argsort(np.argsort(values, kind="stable"), kind="stable")
    return [float(r) for r in order]


def _write_logprobs(path: Path, rows: list[dict], passes: dict) -> None:
    lines = []
    for i, row in enumerate(rows):
        for j, side in enumerate(("chosen", "rejected")):
            k = 2 * i + j
            rec = {"subset": row["subset"], "id": row["id"], "side": side, "chars": len(row[side])}
            rec.update({name: {"logprob": p["logprob"][k], "tokens": p["tokens"][k]} for name, p in passes.items()})
            lines.append(json.dumps(rec))
    atomic_write_text(path, "\n".join(lines) + "\n")


def markdown(results: dict) -> str:
    rec = results["recommended"]
    lines = [
        f"# Pair comparison on {results['data']['rows']} RewardBench rows (`{results['data']['source']}`)",
        "",
        f"Variant `{results['variant']}`; each of the {results['passes']} models scored every response once and every "
        "ordered pair was derived by differencing. Ties count as wrong; 95% bootstrap intervals.",
        "",
        "| strong / weak | " + " | ".join(SECTIONS) + " | score | gap |",
        "|---|" + "---|" * (len(SECTIONS) + 2),
    ]
    for key, p in sorted(results["pairs"].items(), key=lambda kv: -kv[1]["accuracy"]):
        cells = [cell(p["sections"].get(s), p["intervals"].get(s)) for s in SECTIONS]
        score = cell(p["accuracy"], p["intervals"].get("score"))
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {score} | {p['gap']:+.3f} |")
    lines += [
        "",
        "Each model alone:",
        "",
        "| model | " + " | ".join(SECTIONS) + " | score | load s | scoring s |",
        "|---|" + "---|" * (len(SECTIONS) + 3),
    ]
    for name, m in results["models"].items():
        s = m["single_model"]
        cells = [cell(s["sections"].get(x), s["intervals"].get(x)) for x in SECTIONS]
        lines.append(
            f"| {name} | " + " | ".join(cells) + f" | {cell(s['accuracy'], s['intervals'].get('score'))} | "
            f"{m['load_s']} | {m['scoring_s']} |"
        )
    g = results["gap"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"
    lines += [
        "",
        f"Gap ({g['source']}) against pair score over {g['n_pairs']} ordered pairs: Pearson r = "
        f"{fmt(g['pearson'])}, Spearman rho = {fmt(g['spearman'])}.",
        "",
        f"**Recommended: strong `{rec['strong']}`, weak `{rec['weak']}`**, "
        f"score {cell(rec['score'], rec['interval'])}.",
    ]
    if rec["runner_up_within_interval"]:
        lines.append(
            f"The runner-up ({rec['runner_up']}) is inside that interval: on this data the two are not "
            "distinguishable; evaluate on more rows before relying on the ranking."
        )
    return "\n".join(lines) + "\n"
