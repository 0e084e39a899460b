"""Drive OpenRLHF's own remote-reward code against a running `cdr serve`; print one JSON report line.

    PYTHONPATH=/tmp/orlhf-0.8.11:tests python tests/openrlhf_driver.py 0.8.11 \
        http://127.0.0.1:8000/get_reward TOKENIZER_DIR

OpenRLHF is installed with ``pip install --no-deps --target DIR openrlhf==VERSION``; its code runs as is.
Stood in, because they cannot run here or are unrelated to the reward call: Ray (``ray.remote`` is the
identity), vLLM (an engine that "generates" fixed responses: token ids from the real tokenizer, EOS or
not, finish_reason "stop"/"length"), the package ``__init__`` files (they import DeepSpeed and friends;
the modules used are loaded from their real files), and in 0.11.2 ``trainer/ray/vllm_engine.py``.
The tokenizer is real (SmolLM2's, from the tiny test model's directory).

What runs for real:
- 0.8.11: ``SamplesGenerator.tokenize_fn`` (prompt truncation), ``request_api_wrapper`` (one POST of the
  whole batch, 5 tries) and ``update_samples_with_rewards`` (the merge that torch.cat()s the answer).
- 0.11.2: ``SingleTurnAgentExecutor.execute`` for every sample at once (prompt truncation, decoding the
  query, ``_fetch_rewards_via_http`` with aiohttp), ``SamplesGenerator._process_response_into_experience``
  and ``Experience.concat_experiences`` (the merge a missing reward breaks).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import sys
import types
from pathlib import Path


def stub_packages(*names: str) -> None:
    """Bare package modules whose submodules load from OpenRLHF's real files, skipping the heavy __init__s."""
    spec = importlib.util.find_spec("openrlhf")
    root = Path(next(iter(spec.submodule_search_locations)))
    for name in names:
        module = types.ModuleType(name)
        module.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
        sys.modules[name] = module


def stub_ray() -> None:
    ray = types.ModuleType("ray")
    ray.remote = lambda obj=None, **_: obj if obj is not None else (lambda o: o)
    sys.modules["ray"] = ray


QUESTIONS = [
    "What is 2+2?",
    "Name a colour.",
    "Tell me a story about a long journey through the mountains and rivers.",
    "Say nothing.",
    "Count to three.",
]


def plan(n: int):
    """(question, response text or None for EOS only, ends with EOS?) per sample."""
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)] + f" ({i})"
        if i % 5 == 3:
            out.append((q, None, True))  # EOS only: an empty response
        elif i % 5 == 4:
            out.append((q, f"One, two, and then {i}", False))  # cut off at the token limit
        else:
            out.append((q, f"It is {i}.", True))
    return out


def run_0_8(url: str, tokenizer, n: int) -> dict:
    import torch

    stub_ray()
    stub_packages(
        "openrlhf",
        "openrlhf.utils",
        "openrlhf.models",
        "openrlhf.trainer",
        "openrlhf.trainer.ppo_utils",
        "openrlhf.trainer.ray",
    )
    launcher = types.ModuleType("openrlhf.trainer.ray.launcher")
    launcher.RayActorGroup = object
    sys.modules["openrlhf.trainer.ray.launcher"] = launcher
    from openrlhf.trainer.ppo_utils.experience_maker import Experience, SamplesGenerator, update_samples_with_rewards
    from openrlhf.utils.remote_rm_utils import request_api_wrapper
    from openrlhf.utils.utils import remove_pad_token

    gen = object.__new__(SamplesGenerator)
    gen.tokenizer = tokenizer
    rows = plan(n)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q, _, _ in rows
    ]
    prompt_max_len = 1024
    prompt_ids = gen.tokenize_fn(prompts, prompt_max_len, padding=False)["input_ids"]
    prompt_ids[2] = prompt_ids[2][:12]  # this sample's prompt hit --prompt_max_len (right-truncated by tokenize_fn)
    samples = []
    for (q, text, eos), ids in zip(rows, prompt_ids):
        out = (tokenizer(text, add_special_tokens=False)["input_ids"] if text else []) + (
            [tokenizer.eos_token_id] if eos else []
        )
        seq = torch.tensor([ids + out])
        info = {
            "response_length": torch.tensor([len(out)]),
            "total_length": torch.tensor([seq.shape[1]]),
        }  # as 0.8.11 sets
        samples.append(
            Experience(sequences=seq, attention_mask=torch.ones_like(seq), prompts=[q], labels=[None], info=info)
        )
    queries = sum(
        [
            tokenizer.batch_decode(remove_pad_token(s.sequences, s.attention_mask), skip_special_tokens=False)
            for s in samples
        ],
        [],
    )
    answer = request_api_wrapper(url, {"query": queries, "prompts": prompts, "labels": [None] * n})
    update_samples_with_rewards([answer], samples)
    crash = False
    try:  # what 0.8.x does with extra_logs lists (why `cdr serve --extra-logs none` exists)
        update_samples_with_rewards([{**answer, "extra_logs": {"strong_logprob": [0.0] * n}}], samples)
    except TypeError:
        crash = True
    rewards = [s.rewards for s in samples if s.rewards is not None and s.rewards.numel() == 1]
    return {
        "samples": n,
        "rewards": len(rewards),
        "failed": n - len(rewards),
        "unscorable_reward_rows": sum(float(r) == float(answer["rewards"][3]) for r in rewards),
        "crash_with_list_extra_logs": crash,
        "extra_logs": answer["extra_logs"],
    }


def run_0_11(url: str, tokenizer, n: int) -> dict:
    import torch

    stub_ray()
    vllm = types.ModuleType("vllm")
    vllm.SamplingParams = type("SamplingParams", (), {})
    sys.modules["vllm"] = vllm
    stub_packages(
        "openrlhf", "openrlhf.utils", "openrlhf.trainer", "openrlhf.trainer.ppo_utils", "openrlhf.trainer.ray"
    )
    engine_mod = types.ModuleType("openrlhf.trainer.ray.vllm_engine")
    engine_mod.batch_vllm_engine_call = None
    sys.modules["openrlhf.trainer.ray.vllm_engine"] = engine_mod
    from openrlhf.trainer.ppo_utils.experience import Experience
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    rows = plan(n)

    class Params:
        def __init__(self, max_tokens):
            self.max_tokens, self.logprobs = max_tokens, None

    class Engine:  # vLLM stand-in: the planned response for whichever prompt it is given
        async def generate(self, prompt_token_ids, params, multi_modal_data=None):
            index = int(re.findall(r"\((\d+)\)<\|im_end\|>", tokenizer.decode(prompt_token_ids))[-1])
            _, text, eos = rows[index]
            ids = (tokenizer(text, add_special_tokens=False)["input_ids"] if text else [])[: params.max_tokens]
            if eos:
                ids = ids + [tokenizer.eos_token_id]
            out = types.SimpleNamespace(
                token_ids=ids, finish_reason="stop" if eos else "length", logprobs=None, text=""
            )
            await asyncio.sleep(0)
            return types.SimpleNamespace(outputs=[out])

    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q, _, _ in rows
    ]
    executor = SingleTurnAgentExecutor(remote_rm_url=url)
    max_tokens = 16

    async def all_at_once():
        calls = []
        for i, p in enumerate(prompts):
            n_prompt = len(tokenizer(p, add_special_tokens=False)["input_ids"])
            max_length = n_prompt - 8 + max_tokens if i == 2 else 4096  # sample 2's prompt gets truncated
            calls.append(executor.execute(p, None, Params(max_tokens), max_length, tokenizer, Engine()))
        return await asyncio.gather(*calls)

    outputs = asyncio.run(all_at_once())
    gen = object.__new__(SamplesGenerator)
    experiences = [gen._process_response_into_experience(o, max_len=4096) for o in outputs]
    merged = Experience.concat_experiences(experiences, tokenizer.pad_token_id or 0)
    failed = sum(o["reward"] is None for o in outputs)
    flags = [o["extra_logs"].get("cdr_unscorable", [None])[0] for o in outputs]
    return {
        "samples": n,
        "rewards": int(merged.rewards.numel()) if merged.rewards is not None else 0,
        "failed": failed,
        "unscorable": flags[:5],
        "unscorable_rows": sum(f == 1.0 for f in flags),
        "no_eos": [o["extra_logs"].get("cdr_no_eos", [None])[0] for o in outputs[:5]],
        "truncated": [o["truncated"] for o in outputs[:5]],
        "merged_info_keys": sorted(merged.info) if isinstance(merged.info, dict) else None,
        "reward_dtype": str(merged.rewards.dtype) if isinstance(merged.rewards, torch.Tensor) else None,
    }


def main() -> None:
    version, url, tokenizer_dir = sys.argv[1:4]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    report = run_0_8(url, tokenizer, n) if version.startswith("0.8") else run_0_11(url, tokenizer, n)
    report["version"] = version
    print(json.dumps(report))


if __name__ == "__main__":
    main()
