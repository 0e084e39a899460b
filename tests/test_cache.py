import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from cdr import DensityRatio
from cdr.backends import LogprobRequest
from cdr.cache import LogprobCache
from conftest import build_tiny_gemma3

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
CONVS = [
    PROMPT + [{"role": "assistant", "content": a}] for a in ("Paris.", "Berlin, surely.", "Paris, the city of light.")
]


def test_roundtrip_and_keys(tmp_path):
    cache = LogprobCache(tmp_path / "c.sqlite")
    reqs = [LogprobRequest((1, 2, 3, 4), 2), LogprobRequest((1, 2, 3, 4), 3), LogprobRequest((1, 2, 3, 5), 2)]
    values = [np.array([-0.5, -1.25]), np.array([-2.0]), np.array([-0.1, -0.2])]
    assert cache.get_many("m1", reqs) == [None, None, None]
    cache.put_many("m1", reqs, values)
    for got, want in zip(cache.get_many("m1", reqs), values):
        np.testing.assert_array_equal(got, want)
    assert cache.get_many("m2", reqs) == [None, None, None]  # another model never sees m1's numbers
    assert len(cache) == 3


def test_second_run_reads_everything_from_the_cache(tmp_path, tiny_strong, tiny_weak):
    path = tmp_path / "c.sqlite"
    first = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path))
    a = first.score(CONVS)
    assert first.cache.misses == 2 * len(CONVS) and first.cache.hits == 0
    second = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path), variant="sum")
    calls = []
    second.strong.backend.response_logprobs = lambda *a, **k: calls.append(a) or []
    second.weak.backend.response_logprobs = lambda *a, **k: calls.append(a) or []
    b = second.score(CONVS)
    assert calls == [] and second.cache.hits == 2 * len(CONVS)
    uncached = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", variant="sum").score(CONVS)
    for x, y, z in zip(a, b, uncached):
        assert x.strong_logprob == y.strong_logprob == z.strong_logprob
        assert x.weak_logprob == y.weak_logprob == z.weak_logprob
        assert y.reward == pytest.approx(y.strong_logprob - y.weak_logprob)


def test_changed_weak_model_recomputes_only_the_weak_side(tmp_path, tiny_strong, tiny_weak, gemma_tokenizer):
    path = tmp_path / "c.sqlite"
    DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache=str(path)).score(CONVS)
    other_weak = build_tiny_gemma3(gemma_tokenizer, tmp_path / "other_weak", seed=7)
    reward = DensityRatio(strong=str(tiny_strong), weak=str(other_weak), cache=str(path))
    reward.score(CONVS)
    assert reward.cache.hits == len(CONVS)  # the strong side
    assert reward.cache.misses == len(CONVS)  # the new weak model


def test_duplicates_within_a_call_are_scored_once(tmp_path, tiny_strong, tiny_weak):
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")
    seen = []
    original = reward.strong.backend.response_logprobs
    reward.strong.backend.response_logprobs = lambda reqs, **k: seen.append(len(reqs)) or original(reqs, **k)
    results = reward.score([CONVS[0], CONVS[1], CONVS[0]])
    assert seen == [2]
    assert results[0].reward == results[2].reward


WRITER = r"""
import sys, numpy as np
from cdr.backends import LogprobRequest
from cdr.cache import LogprobCache
cache = LogprobCache(sys.argv[1])
offset = int(sys.argv[2])
for batch in range(40):
    reqs = [LogprobRequest(tuple(range(i, i + 20)), 5) for i in range(offset + batch * 25, offset + batch * 25 + 25)]
    cache.put_many("m", reqs, [np.full(15, -float(r.token_ids[0])) for r in reqs])
    got = cache.get_many("m", reqs)
    assert all(g is not None and g[0] == -float(r.token_ids[0]) for g, r in zip(got, reqs))
"""


def test_two_processes_on_one_cache_do_not_corrupt_it(tmp_path):
    path = tmp_path / "shared.sqlite"
    # overlapping key ranges: both processes write 500 of the same entries at the same time
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(off)]) for off in (0, 500)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    cache = LogprobCache(path)
    assert len(cache) == 1500
    reqs = [LogprobRequest(tuple(range(i, i + 20)), 5) for i in range(1500)]
    assert all(g[0] == -float(i) for i, g in enumerate(cache.get_many("m", reqs)))
