"""The density-ratio reward as a reward function for TRL's GRPO trainer.

``reward_function`` returns a callable with the signature TRL expects of a custom reward,
``f(prompts, completions, **kwargs) -> list[float]``, so it goes straight into ``reward_funcs``::

    from trl import GRPOConfig, GRPOTrainer
    from cdr.trl import reward_function

    trainer = GRPOTrainer(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        reward_funcs=[reward_function(strong="default", weak="default", batch_size=64)],
        args=GRPOConfig(output_dir="grpo", num_generations=8, max_completion_length=256),
        train_dataset=dataset,  # a "prompt" column: strings, or message lists ending with a user turn
    )
    trainer.train()

An existing pair can be shared instead of loading another one: ``reward_function(DensityRatio(...))``.
Without one, the pair is built from ``strong``, ``weak`` and any ``RewardConfig`` option (``variant=``,
``cache=``, ``device=``, ...) when the function is first called; the options are checked at once.

Both of TRL's dataset shapes are accepted:

* standard: ``prompts[i]`` and ``completions[i]`` are strings. The prompt becomes one user message and the
  completion the assistant reply, rendered with each model's chat template. (The policy itself saw the raw
  prompt text; for a chat policy prefer the conversational shape, where both sides see the same turns.)
* conversational: ``prompts[i]`` is a message list ending with a user turn (a system message first is fine)
  and ``completions[i]`` is ``[{"role": "assistant", "content": "..."}]``. Multi-message completions (tool
  calling) are not supported.

One batch uses one shape; a row of the other shape, a completion of the wrong type, or prompts and
completions of different lengths raise ``ValueError`` naming the index. Extra keyword arguments that TRL
passes (``completion_ids``, ``trainer_state``, ``log_metric``, dataset columns, ...) are ignored.

Scoring goes through ``DensityRatio.score`` in chunks of ``batch_size`` conversations, so the reward's
log-prob cache is used (``cache="none"`` turns it off), and ``output[i]`` always belongs to
``prompts[i]``/``completions[i]``.

Unscorable rows: a completion that cannot be scored returns ``unscorable`` (default NaN) instead of a
reward. That covers rows ``DensityRatio`` marks unscorable (``result.reward is None``, e.g. a prompt that
fills the model's context), completions the policy left empty or whitespace-only, and a non-finite reward.
TRL's GRPO reads NaN as "no reward from this function": the value is left out of the weighted sum over
reward functions, and a completion for which every reward function gives NaN is left out of its group's
baseline and gets zero advantage. Pass ``unscorable=0.0`` (or any number) to give such rows a fixed reward
instead; ``None`` is also accepted (TRL turns it into NaN).

The returned object is a small callable class rather than a closure: it is named ``cdr_density_ratio``
(TRL logs ``rewards/cdr_density_ratio/mean``), and it pickles (keeping the reward's configuration, not its
loaded models) for trainers that ship reward functions to a worker process. Calls are serialised by a
lock, so it is safe to call from several threads.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from cdr.config import RewardConfig
from cdr.conversation import Conversation
from cdr.reward import DensityRatio

NAME = "cdr_density_ratio"

__all__ = ["reward_function", "DensityRatioReward", "NAME"]


def reward_function(
    reward: DensityRatio | None = None,
    *,
    strong: str = "default",
    weak: str = "default",
    batch_size: int = 64,
    unscorable: float | None = float("nan"),
    **options: Any,
) -> DensityRatioReward:
    """A TRL GRPO reward function ``f(prompts, completions, **kwargs) -> list[float]`` for the density ratio.

    ``reward``: an existing ``DensityRatio`` to score with (then ``strong``, ``weak`` and ``options`` must be
    left out). Otherwise a pair is built from ``strong``, ``weak`` and ``options`` (any ``RewardConfig``
    field, or ``config=RewardConfig(...)``) on the first call.
    ``batch_size``: conversations per ``DensityRatio.score`` call.
    ``unscorable``: the value returned for a row that cannot be scored (default NaN: "no reward" to GRPO).
    """
    return DensityRatioReward(reward, strong=strong, weak=weak, batch_size=batch_size, unscorable=unscorable, **options)


class DensityRatioReward:
    """The callable that ``reward_function`` returns; see the module docstring."""

    def __init__(
        self,
        reward: DensityRatio | None = None,
        *,
        strong: str = "default",
        weak: str = "default",
        batch_size: int = 64,
        unscorable: float | None = float("nan"),
        **options: Any,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if unscorable is not None:
            try:
                unscorable = float(unscorable)
            except (TypeError, ValueError):
                raise ValueError(f"unscorable must be a number or None, got {unscorable!r}") from None
        if reward is not None:
            if not isinstance(reward, DensityRatio):
                raise TypeError(f"reward must be a cdr.DensityRatio, got {type(reward).__name__}")
            if strong != "default" or weak != "default" or options:
                raise TypeError(
                    "pass either an existing DensityRatio as `reward` or strong/weak/options to build one, not both"
                )
            config = reward.config
        else:
            # Built now (cheap) so that a bad option fails here, not at the first training step; the models load later.
            config = options.pop("config", None)
            if config is None:
                config = RewardConfig.from_flat(options, strong=strong, weak=weak)
            elif options:
                config = config.replace(**options)
        self.__name__ = NAME
        self.config: RewardConfig = config
        self.batch_size = batch_size
        self.unscorable = unscorable
        self._reward = reward
        self._lock = threading.RLock()

    @property
    def density_ratio(self) -> DensityRatio:
        """The scoring pair; built on first use when none was given (touch this to load the models early)."""
        with self._lock:
            if self._reward is None:
                self._reward = DensityRatio(config=self.config)
            return self._reward

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        rows = _conversations(prompts, completions)
        out: list[float | None] = [self.unscorable] * len(rows)
        todo = [i for i, conv in enumerate(rows) if conv is not None]
        if not todo:
            return out
        with self._lock:
            reward = self.density_ratio
            for start in range(0, len(todo), self.batch_size):
                chunk = todo[start : start + self.batch_size]
                results = reward.score([rows[i] for i in chunk])
                if len(results) != len(chunk):  # score promises one result per conversation, in order
                    raise RuntimeError(
                        f"DensityRatio.score returned {len(results)} results for {len(chunk)} conversations"
                    )
                for i, result in zip(chunk, results):
                    value = result.reward
                    out[i] = value if value is not None and math.isfinite(value) else self.unscorable
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reward"] = None  # the loaded models stay behind; the copy rebuilds them from the config
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(strong={self.config.strong!r}, weak={self.config.weak!r}, "
            f"variant={self.config.variant!r}, batch_size={self.batch_size}, unscorable={self.unscorable!r})"
        )


def _describe(value: Any) -> str:
    return "a string" if isinstance(value, str) else f"{type(value).__name__}"


def _is_message_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes))


def _conversations(prompts: Sequence[Any], completions: Sequence[Any]) -> list[Conversation | None]:
    """One Conversation per (prompt, completion), in order; None where the completion is empty (unscorable)."""
    for name, value in (("prompts", prompts), ("completions", completions)):
        if not _is_message_list(value):
            raise ValueError(f"{name} must be a list (one item per completion), got {_describe(value)}")
    if len(prompts) != len(completions):
        n = min(len(prompts), len(completions))
        missing = "completion" if len(prompts) > len(completions) else "prompt"
        longer = "prompts" if len(prompts) > len(completions) else "completions"
        raise ValueError(
            f"got {len(prompts)} prompts but {len(completions)} completions: {longer}[{n}] has no {missing} "
            "(they must pair up index by index)"
        )
    if not prompts:
        return []
    conversational = not isinstance(prompts[0], str)
    shape = "conversational (a message list)" if conversational else "standard (a string)"
    return [_conversation(i, p, c, conversational, shape) for i, (p, c) in enumerate(zip(prompts, completions))]


def _conversation(i: int, prompt: Any, completion: Any, conversational: bool, shape: str) -> Conversation | None:
    if isinstance(prompt, str):
        if conversational:
            raise ValueError(f"prompts[{i}] is a string, but prompts[0] is {shape}: one batch must use one format")
        if not isinstance(completion, str):
            raise ValueError(
                f"completions[{i}]: prompts[{i}] is a string (standard format), so its completion must be a string, "
                f"got {_describe(completion)}"
            )
        text, field = completion, f"completions[{i}]"
    elif _is_message_list(prompt):
        if not conversational:
            raise ValueError(
                f"prompts[{i}] is a message list, but prompts[0] is {shape}: one batch must use one format"
            )
        if not _is_message_list(completion):
            raise ValueError(
                f"completions[{i}]: prompts[{i}] is a message list (conversational format), so its completion must be "
                f'a list holding one assistant message, [{{"role": "assistant", "content": "..."}}], '
                f"got {_describe(completion)}"
            )
        if len(completion) != 1:
            raise ValueError(
                f"completions[{i}]: expected a list holding one assistant message, got {len(completion)} messages "
                "(multi-message completions, e.g. tool calling, are not supported)"
            )
        message = completion[0]
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            got = f"role {message.get('role')!r}" if isinstance(message, Mapping) else _describe(message)
            raise ValueError(f"completions[{i}][0]: expected an assistant message, got {got}")
        text, field = message.get("content"), f"completions[{i}][0].content"
    else:
        raise ValueError(f"prompts[{i}]: expected a string or a message list, got {_describe(prompt)}")
    if text is None or (isinstance(text, str) and not text.strip()):
        return None  # the policy produced no text: nothing to score, which is not a data error
    # raises ConversationError (a ValueError) naming e.g. prompts[3][1].role or completions[2][0].content
    return Conversation.from_prompt_response(prompt, text, prompt_field=f"prompts[{i}]", response_field=field)
