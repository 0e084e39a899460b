"""The benchmarks ``cdr eval`` runs, by name: RewardBench (v1, the default) and RewardBench 2."""

from __future__ import annotations

from cdr.errors import CdrError
from cdr.pipelines.evaluate import REWARDBENCH, Benchmark
from cdr.pipelines.evaluate_v2 import REWARDBENCH2

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (REWARDBENCH, REWARDBENCH2)}


def benchmark_named(name: str) -> Benchmark:
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise CdrError(f"benchmark (--benchmark) must be one of {', '.join(BENCHMARKS)}, got {name!r}") from None
