"""``cdr demo``: score the packaged demo set (a good and a bad answer per prompt) and show the decisions.

The demo set (``cdr/data/demo.jsonl``, written for this project) has 40 prompts across chat, safety,
math and code. Each answer is scored as its own row through the same resumable ``score_file`` pipeline
as ``cdr score``; the table then shows, per domain, how often the reward prefers the good answer, next
to two baselines: the strong model's mean log-prob alone, and "prefer the longer answer".
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib.resources import files
from pathlib import Path

from cdr.config import RewardConfig
from cdr.output import write_if_changed
from cdr.pipelines.score import score_file
from cdr.reward import DensityRatio


def demo_rows() -> list[dict]:
    text = files("cdr").joinpath("data/demo.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def expand(rows: list[dict]) -> list[dict]:
    """One scoring row per (prompt, answer): the conversation as a message list."""
    out = []
    for row in rows:
        turns = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        for side in ("chosen", "rejected"):
            out.append(
                {
                    "id": row["id"],
                    "domain": row["domain"],
                    "side": side,
                    "messages": turns + [{"role": "assistant", "content": row[side]}],
                }
            )
    return out


def run_demo(output_dir: str | Path, config: RewardConfig, overwrite: bool = False, progress: bool = True) -> str:
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = out_dir / "demo_rows.jsonl"
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in expand(demo_rows()))
    write_if_changed(rows_path, text)
    reward = DensityRatio(config=config)
    summary = score_file(rows_path, out_dir / "scores.jsonl", reward, overwrite=overwrite, progress=progress)
    scored = [json.loads(line) for line in open(summary.output, encoding="utf-8")]
    return summary.render() + "\n\n" + decision_table(scored, reward.provenance)


def decision_table(scored: list[dict], provenance: dict) -> str:
    by_id: dict[str, dict] = defaultdict(dict)
    for r in scored:
        by_id[r["id"]][r["side"]] = r
        by_id[r["id"]]["domain"] = r["domain"]
    lines = [f"{'id':<9} {'domain':<7} {'r(good)':>8} {'r(bad)':>8}  reward prefers"]
    wins: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])  # ratio, strong alone, longer, n
    for rid, pair in sorted(by_id.items()):
        good, bad = pair.get("chosen"), pair.get("rejected")
        if not good or not bad or good["reward"] is None or bad["reward"] is None:
            lines.append(f"{rid:<9} {pair['domain']:<7} {'unscorable':>17}")
            continue
        ok = good["reward"] > bad["reward"]
        strong_ok = good["strong_logprob"] / good["strong_tokens"] > bad["strong_logprob"] / bad["strong_tokens"]
        longer_ok = good["strong_tokens"] > bad["strong_tokens"]
        for key in (pair["domain"], "all"):
            w = wins[key]
            w[0] += ok
            w[1] += strong_ok
            w[2] += longer_ok
            w[3] += 1
        verdict = (
            "the good answer"
            if ok
            else "a tie (counts as wrong)"
            if good["reward"] == bad["reward"]
            else "the bad answer  <- wrong"
        )
        lines.append(f"{rid:<9} {pair['domain']:<7} {good['reward']:>8.3f} {bad['reward']:>8.3f}  {verdict}")
    lines += [
        "",
        f"How often the good answer wins ({provenance['variant']} reward, {provenance['strong']} over "
        f"{provenance['weak']}, rendering '{provenance['rendering']}'):",
        f"{'domain':<8} {'pairs':>5} {'cdr reward':>11} {'strong alone':>13} {'longer answer':>14}",
    ]
    for key in [*sorted(k for k in wins if k != "all"), "all"]:
        ratio, strong, longer, n = wins[key]
        lines.append(f"{key:<8} {n:>5} {ratio / n:>11.0%} {strong / n:>13.0%} {longer / n:>14.0%}")
    lines.append("(strong alone = the strong model's mean log-prob per token; 40 pairs, so each share is +-15 points)")
    return "\n".join(lines)
