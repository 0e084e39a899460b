"""``cdr.trl.reward_function``: the density ratio as a TRL GRPO reward function.

Real tiny models from conftest (random weights, real tokenizers): the numbers mean nothing, but they are
real scores, so equality with ``DensityRatio.score`` checks the wiring, the shapes and the order.
"""

import math
import pickle

import pytest

from cdr import DensityRatio
from cdr.trl import reward_function

PROMPTS = [
    "Name a colour.",
    "What is 2 + 2?",
    "Say hello in French.",
    "Give me a fruit.",
    "Write one word.",
    "Count to three.",
    "Is water wet?",
]
COMPLETIONS = [
    "Blue.",
    "Four.",
    "Bonjour !",
    "An apple, crisp and red.",
    "Word.",
    "One, two, three.",
    "Yes, mostly.",
]


@pytest.fixture(scope="module")
def reward(tiny_strong, tiny_weak):
    return DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")


def _expected(reward, prompts, completions):
    convs = [
        [{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions)
    ]
    return [r.reward for r in reward.score(convs)]


def test_standard_shape_matches_score_in_order(reward):
    f = reward_function(reward)
    assert f.__name__ == "cdr_density_ratio"
    got = f(PROMPTS[:4], COMPLETIONS[:4])
    expected = _expected(reward, PROMPTS[:4], COMPLETIONS[:4])
    assert all(isinstance(x, float) for x in got)
    assert got == pytest.approx(expected, abs=1e-6)
    assert len(set(round(x, 4) for x in got)) > 1  # distinct rows, so a reordering would show
    # reversed inputs give reversed outputs
    assert f(PROMPTS[:4][::-1], COMPLETIONS[:4][::-1]) == pytest.approx(expected[::-1], abs=1e-6)


def test_conversational_shape_matches_standard(reward):
    f = reward_function(reward)
    prompts = [[{"role": "user", "content": p}] for p in PROMPTS[:4]]
    completions = [[{"role": "assistant", "content": c}] for c in COMPLETIONS[:4]]
    conversational = f(prompts, completions, completion_ids=[[1, 2]] * 4, trainer_state=None, answer=["x"] * 4)
    standard = f(PROMPTS[:4], COMPLETIONS[:4])
    assert conversational == pytest.approx(standard, abs=1e-6)
    # a system turn first is part of the prompt
    with_system = f([[{"role": "system", "content": "Be brief."}] + p for p in prompts], completions)
    assert len(with_system) == 4 and all(math.isfinite(x) for x in with_system)


def test_order_preserved_across_batches(reward):
    all_at_once = reward_function(reward, batch_size=64)(PROMPTS, COMPLETIONS)
    batched = reward_function(reward, batch_size=3)(PROMPTS, COMPLETIONS)
    assert len(batched) == 7
    assert batched == pytest.approx(all_at_once, abs=1e-4)
    assert batched == pytest.approx(_expected(reward, PROMPTS, COMPLETIONS), abs=1e-4)


def test_bad_inputs_raise_value_error_naming_the_index(reward):
    f = reward_function(reward)
    with pytest.raises(ValueError, match=r"3 prompts but 2 completions.*prompts\[2\]"):
        f(PROMPTS[:3], COMPLETIONS[:2])
    with pytest.raises(ValueError, match=r"2 prompts but 3 completions.*completions\[2\]"):
        f(PROMPTS[:2], COMPLETIONS[:3])
    with pytest.raises(ValueError, match=r"completions\[1\].*string"):
        f(PROMPTS[:2], ["Blue.", 42])
    with pytest.raises(ValueError, match=r"completions\[1\].*one assistant message"):
        f([[{"role": "user", "content": p}] for p in PROMPTS[:2]], [[{"role": "assistant", "content": "a"}], "b"])
    with pytest.raises(ValueError, match=r"completions\[0\]\[0\].*assistant message"):
        f([[{"role": "user", "content": "Hi"}]], [[{"role": "user", "content": "a"}]])
    with pytest.raises(ValueError, match=r"prompts\[1\].*one format"):
        f(["Hi", [{"role": "user", "content": "Hi"}]], ["a", [{"role": "assistant", "content": "b"}]])
    with pytest.raises(ValueError, match=r"prompts\[1\]\[0\]\.role"):  # ConversationError is a ValueError
        f(
            [[{"role": "user", "content": "Hi"}], [{"role": "robot", "content": "Hi"}]],
            [[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
        )
    with pytest.raises(ValueError, match="batch_size"):
        reward_function(reward, batch_size=0)
    with pytest.raises(TypeError):
        reward_function(reward, variant="sum")


def test_unscorable_rows(reward, tiny_strong, tiny_weak):
    f = reward_function(reward)
    got = f(["Name a colour.", "Name a colour.", "Name a colour."], ["Blue.", "   ", ""])
    assert math.isfinite(got[0]) and math.isnan(got[1]) and math.isnan(got[2])
    conv = f([[{"role": "user", "content": "Hi"}]], [[{"role": "assistant", "content": None}]])
    assert math.isnan(conv[0])
    # a prompt that fills the context: DensityRatio marks it unscorable (reward None)
    short = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", max_length=64)
    long_prompt = "word " * 100
    assert (
        short.score([[{"role": "user", "content": long_prompt}, {"role": "assistant", "content": "Ok."}]])[0].reward
        is None
    )
    for unscorable, check in ((float("nan"), math.isnan), (0.0, lambda x: x == 0.0), (None, lambda x: x is None)):
        out = reward_function(short, unscorable=unscorable)(["Hi", long_prompt, "Hi"], ["Hello.", "Ok.", "Hey."])
        assert math.isfinite(out[0]) and math.isfinite(out[2]) and check(out[1])


def test_built_lazily_from_options_and_picklable(reward, tiny_strong, tiny_weak):
    f = reward_function(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", batch_size=2)
    assert f._reward is None  # nothing loaded until the first call
    with pytest.raises(Exception, match="variant"):
        reward_function(strong=str(tiny_strong), weak=str(tiny_weak), variant="nope")
    expected = _expected(reward, PROMPTS[:3], COMPLETIONS[:3])
    assert f(PROMPTS[:3], COMPLETIONS[:3]) == pytest.approx(expected, abs=1e-5)
    copy = pickle.loads(pickle.dumps(f))
    assert copy.__name__ == "cdr_density_ratio" and copy._reward is None
    assert copy(PROMPTS[:3], COMPLETIONS[:3]) == pytest.approx(expected, abs=1e-5)


def test_grpo_trainer_smoke(reward, tiny_strong, tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("trl", reason="install the [trl] extra (the test command does)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(str(tiny_strong))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(tiny_strong))

    f = reward_function(reward)
    calls = []

    def counted(prompts, completions, **kwargs):
        out = f(prompts, completions, **kwargs)
        calls.append((len(prompts), out))
        return out

    counted.__name__ = f.__name__

    dataset = datasets.Dataset.from_list(
        [{"prompt": p} for p in ["Name a colour.", "What is 2 + 2?", "Say hello.", "Give me a fruit."]]
    )
    config = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        max_steps=2,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=8,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        seed=0,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=[counted], args=config, train_dataset=dataset, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 2
    assert len(calls) >= 2 and all(n == len(out) for n, out in calls)
    assert any(math.isfinite(x) for _, out in calls for x in out)  # real scores came back, not only NaN
    logged = [entry for entry in trainer.state.log_history if "rewards/cdr_density_ratio/mean" in entry]
    assert logged, trainer.state.log_history
