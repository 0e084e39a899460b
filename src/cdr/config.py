"""Configuration as a dataclass with a help string per field, loadable from YAML (as TRL's configs are)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdr.errors import CdrError
from cdr.rendering import RENDERINGS, PlainFormat

VARIANTS = ("sum", "mean", "mean_diff")
# Chosen by measurement on the mini RewardBench set with the embedded pair (docs/benchmarks.md section 1,
# re-measured with the repaired tokenizer): mean_diff measured highest of the three variants (0.581 vs
# 0.553 sum, 0.537 mean), leaned least towards longer answers, and is the one whose units stay right when
# the two tokenizers differ (for a same-tokenizer pair it equals 'mean'); with it 'own' beat 'shared'
# (0.581 vs 0.565).
DEFAULT_VARIANT = "mean_diff"
DEFAULT_RENDERING = "own"


@dataclass
class RewardConfig:
    strong: str = field(default="default", metadata={"help": "strong (better aligned) model: 'default', a packaged name, a path (dir or .gguf) or a hub id"})
    weak: str = field(default="default", metadata={"help": "weak (less aligned) model, same forms as strong"})
    backend: str = field(default="default", metadata={"help": "backend for both models: default (hf), hf, llamacpp, vllm, openai"})
    strong_backend: str | None = field(default=None, metadata={"help": "backend for the strong model only (overrides backend)"})
    weak_backend: str | None = field(default=None, metadata={"help": "backend for the weak model only (overrides backend)"})
    variant: str = field(default=DEFAULT_VARIANT, metadata={"help": "sum: log-ratio summed over response tokens; mean: that sum / strong response tokens; mean_diff: strong mean log-prob - weak mean log-prob"})
    rendering: str = field(default=DEFAULT_RENDERING, metadata={"help": "own: each model uses its own chat template (plain format without one); shared: the strong model's rendering goes to both"})
    include_eot: bool = field(default=True, metadata={"help": "score the end-of-turn token(s) that close the response"})
    plain_format: PlainFormat = field(default_factory=PlainFormat, metadata={"help": "format for models without a chat template: system/user/assistant with {content}, end_of_turn ({eos} = EOS token)"})
    max_length: int | None = field(default=None, metadata={"help": "truncate sequences longer than this (default: the model's context); truncated rows are flagged"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: str = field(default="auto", metadata={"help": "auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16, float16"})
    batch_tokens: int = field(default=8192, metadata={"help": "padded tokens per forward batch"})
    prompt_sharing: bool = field(default=True, metadata={"help": "responses sharing a prompt of 64+ tokens run it once and reuse its key/value cache (transformers backend)"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads per model (default: all cores; half of them each with --overlap)"})
    overlap: bool = field(default=False, metadata={"help": "score the strong and the weak model at the same time, in two threads (see docs/benchmarks.md for when it pays)"})
    strong_url: str | None = field(default=None, metadata={"help": "openai backend: base URL of the server holding the strong model (e.g. http://127.0.0.1:8000/v1)"})
    weak_url: str | None = field(default=None, metadata={"help": "openai backend: base URL of the server holding the weak model"})
    strong_served_model: str | None = field(default=None, metadata={"help": "openai backend: the strong model's name on its server (default: --strong)"})
    weak_served_model: str | None = field(default=None, metadata={"help": "openai backend: the weak model's name on its server (default: --weak)"})
    remote_api_key_env: str | None = field(default=None, metadata={"help": "openai backend: environment variable with the servers' bearer token"})
    concurrency: int = field(default=8, metadata={"help": "openai backend: requests in flight at once, per model"})
    vllm_kv_cache_gib: float | None = field(default=None, metadata={"help": "vllm backend: KV cache per model in GiB (default: 2 on a CPU; on a GPU, from vllm_memory_fraction)"})
    vllm_memory_fraction: float | None = field(default=None, metadata={"help": "vllm backend: vLLM's gpu_memory_utilization per model (default on a GPU: 0.45, so the pair's two engines fit)"})
    vllm_compile: bool = field(default=False, metadata={"help": "vllm backend: let vLLM compile the models (torch.compile; minutes of start-up per model on a CPU) instead of running eagerly"})
    vllm_multiprocessing: bool = field(default=False, metadata={"help": "vllm backend: each engine in its own process, started with spawn (a calling script then needs an if __name__ == '__main__' guard); default: in this process"})
    recipe: Any = field(default="vanilla", metadata={"help": "customization: a preset (vanilla, paper, contrastive) or a recipe YAML file; see docs/recipes.md"})
    cache: str | None = field(default="default", metadata={"help": "log-prob cache (SQLite file): 'default' is ~/.cache/cdr/logprobs.sqlite, 'none' turns it off"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub to run (off unless asked)"})
    allow_python_router: bool = field(default=False, metadata={"help": "allow a recipe's python router to import and run the module:function it names (off unless asked)"})

    def __post_init__(self) -> None:
        if isinstance(self.plain_format, dict):
            try:
                self.plain_format = PlainFormat(**self.plain_format)
            except TypeError as exc:
                raise CdrError(f"plain_format: {exc}") from None
        if self.variant not in VARIANTS:
            raise CdrError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.rendering not in RENDERINGS:
            raise CdrError(f"rendering must be one of {', '.join(RENDERINGS)}, got {self.rendering!r}")
        if self.batch_tokens < 1:
            raise CdrError(f"batch_tokens must be positive, got {self.batch_tokens}")
        for name in ("max_length", "threads"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise CdrError(f"{name} (--{name.replace('_', '-')}) must be a whole number >= 1, got {value!r}")
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise CdrError(f"concurrency (--concurrency) must be a whole number >= 1, got {self.concurrency!r}")
        for name, top in (("vllm_kv_cache_gib", None), ("vllm_memory_fraction", 1.0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
                                      or (top is not None and value > top)):
                bound = "in (0, 1]" if top else "a number > 0"
                raise CdrError(f"{name} (--{name.replace('_', '-')}) must be {bound}, got {value!r}")

    @classmethod
    def help(cls, name: str) -> str:
        return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "RewardConfig":
        import yaml

        text = Path(path).read_text()
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise CdrError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise CdrError(f"{path}: expected a mapping of option: value at the top level")
        names = {f.name for f in dataclasses.fields(cls)}
        for key_node, _ in node.value:
            if key_node.value not in names:
                raise CdrError(
                    f"{path}, line {key_node.start_mark.line + 1}: unknown key '{key_node.value}'; "
                    f"known keys: {', '.join(sorted(names))}"
                )
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except TypeError as exc:
            raise CdrError(f"{path}: {exc}") from None
