"""How long are chosen and rejected responses? Printed and written beside every annotated dataset.

The summed log-ratio moves with response length (more tokens, more terms in the sum), so a preference
dataset whose chosen side is systematically longer may teach length rather than quality. Users must see it.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median
from typing import Any

from cdr.output import read_output


def _text(side: Any) -> str:
    return side[-1]["content"] if isinstance(side, list) else str(side)


def length_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    chosen_chars = [len(_text(r["chosen"])) for r in rows]
    rejected_chars = [len(_text(r["rejected"])) for r in rows]
    stats: dict[str, Any] = {"pairs": len(rows)}
    if not rows:
        return stats
    stats["chars"] = {
        "chosen_mean": mean(chosen_chars),
        "chosen_median": median(chosen_chars),
        "rejected_mean": mean(rejected_chars),
        "rejected_median": median(rejected_chars),
    }
    stats["share_chosen_longer"] = sum(c > r for c, r in zip(chosen_chars, rejected_chars)) / len(rows)
    stats["share_same_length"] = sum(c == r for c, r in zip(chosen_chars, rejected_chars)) / len(rows)
    if all(
        isinstance(r.get("chosen_tokens"), (int, float)) and isinstance(r.get("rejected_tokens"), (int, float))
        for r in rows
    ):
        ct = [int(r["chosen_tokens"]) for r in rows]
        rt = [int(r["rejected_tokens"]) for r in rows]
        stats["strong_tokens"] = {
            "chosen_mean": mean(ct),
            "chosen_median": median(ct),
            "rejected_mean": mean(rt),
            "rejected_median": median(rt),
        }
    return stats


def render(stats: dict[str, Any]) -> str:
    if not stats["pairs"]:
        return "length report: no pairs"
    c = stats["chars"]
    lines = [
        f"length report ({stats['pairs']} pairs)",
        f"{'':<22} {'chosen':>10} {'rejected':>10}",
        f"{'mean chars':<22} {c['chosen_mean']:>10.1f} {c['rejected_mean']:>10.1f}",
        f"{'median chars':<22} {c['chosen_median']:>10.1f} {c['rejected_median']:>10.1f}",
    ]
    if "strong_tokens" in stats:
        t = stats["strong_tokens"]
        lines += [
            f"{'mean tokens (strong)':<22} {t['chosen_mean']:>10.1f} {t['rejected_mean']:>10.1f}",
            f"{'median tokens (strong)':<22} {t['chosen_median']:>10.1f} {t['rejected_median']:>10.1f}",
        ]
    lines.append(
        f"chosen is longer in {stats['share_chosen_longer']:.1%} of pairs "
        f"(same length in {stats['share_same_length']:.1%})"
    )
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chosen = [len(_text(r["chosen"])) for r in rows]
    rejected = [len(_text(r["rejected"])) for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = 30
    left.hist([chosen, rejected], bins=bins, label=["chosen", "rejected"], color=["tab:green", "tab:red"], alpha=0.8)
    left.set_xlabel("response length (characters)")
    left.set_ylabel("pairs")
    left.legend()
    left.set_title("length of chosen vs rejected")
    diff = [c - r for c, r in zip(chosen, rejected)]
    right.hist(diff, bins=bins, color="tab:blue")
    right.axvline(0, color="black", linewidth=1)
    right.set_xlabel("chosen - rejected (characters)")
    right.set_title(f"chosen longer in {sum(d > 0 for d in diff) / max(1, len(diff)):.0%} of pairs")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_length_report(output: str | Path) -> str:
    """Compute, print-ready text; also writes OUTPUT.length_report.json and OUTPUT.length_report.png."""
    output = Path(output)
    rows = read_output(output)
    stats = length_stats(rows)
    base = output.with_name(output.name + ".length_report")
    Path(f"{base}.json").write_text(json.dumps(stats, indent=2))
    text = render(stats)
    if rows:
        plot(rows, Path(f"{base}.png"))
        text += f"\nwritten: {base}.json, {base}.png"
    return text
