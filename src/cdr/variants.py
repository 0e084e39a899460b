"""The reward variants: how two models' summed response log-probs and token counts become one reward.

A leaf module (it imports nothing from cdr), so the reward, the benchmarks and the pipelines share it.
"""

from __future__ import annotations

VARIANTS = ("sum", "mean", "mean_diff")


def combine(variant: str, strong_sum, strong_n, weak_sum, weak_n):
    """Combine per-model summed log-probs and token counts into a reward (works on floats or arrays)."""
    if variant == "sum":
        return strong_sum - weak_sum
    if variant == "mean":
        return (strong_sum - weak_sum) / strong_n
    if variant == "mean_diff":
        return strong_sum / strong_n - weak_sum / weak_n
    raise ValueError(f"unknown variant {variant!r}")
