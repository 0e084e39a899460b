"""Sampling candidate responses from a policy model (transformers ``generate``, batched).

This is the generation side of the on-policy recipe (sample N, score, keep best vs worst). It is not a
scoring backend: it takes prompts and returns text. Reproducibility: every call is seeded with the
caller's seed, and the same prompts in the same batches give the same samples on the same machine.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from cdr.errors import ModelNotAvailable
from cdr.models import ModelSource, converted_dir, quiet_transformers


@dataclass(frozen=True)
class SamplingOptions:
    n: int = field(default=4, metadata={"help": "responses per prompt"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature (the paper used 0.7 to 1.0)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling threshold"})
    max_new_tokens: int = field(default=512, metadata={"help": "longest response, in tokens (the paper: up to 1024)"})
    seed: int = field(default=0, metadata={"help": "base seed; each chunk of prompts is seeded from it"})

    def as_dict(self) -> dict:
        return asdict(self)


class TransformersPolicy:
    def __init__(self, source: ModelSource, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from cdr.backends.hf import resolve_device, resolve_dtype

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
            self.model = AutoModelForCausalLM.from_pretrained(
                model_path, dtype=resolve_dtype(dtype, self.device), **kwargs
            ).to(self.device).eval()
        except OSError as exc:
            raise ModelNotAvailable(f"could not load policy '{source.name}': {exc}") from None
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelNotAvailable(f"policy '{source.name}' has no chat template; sample from an instruction-tuned model")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self._torch = torch

    def generate(self, prompts: Sequence[list[dict[str, str]]], options: SamplingOptions, seed: int) -> list[list[str]]:
        """``options.n`` responses for each prompt (message lists ending with a user turn), in order."""
        torch = self._torch
        texts = [self.tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **enc, do_sample=True, temperature=options.temperature, top_p=options.top_p,
                max_new_tokens=options.max_new_tokens, num_return_sequences=options.n, pad_token_id=self.pad_id,
            )
        completions = self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return [[c.strip() for c in completions[i * options.n : (i + 1) * options.n]] for i in range(len(prompts))]
