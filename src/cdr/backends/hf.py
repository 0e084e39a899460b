"""Hugging Face transformers backend: a local model dir, a hub id, or a GGUF file (de-quantized, cached).

The LM head is applied only at the positions that predict response tokens, and the log-softmax is a
logsumexp over tiles of (positions x vocabulary slice), so memory stays bounded even for gemma's
262,144-word vocabulary (docs/method.md, pitfalls): the full-vocabulary log-softmax over every position is
never materialised.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence

import numpy as np

from cdr.backends.base import Backend, BackendOptions, LogprobRequest
from cdr.errors import CdrError, ExitLayerError, ModelNotAvailable
from cdr.models import ModelSource, converted_dir

# Logits held at once by next_token_top_logprobs: chunk_positions x vocabulary floats (128 MiB).
LOGIT_BUDGET = 1 << 25
# Response scoring computes logits in tiles of positions x vocabulary slice, so that each slice of the head's
# weight is multiplied by many positions while it is in cache. On this 2-core CPU (1 MiB L2, 32 MiB L3),
# 512 x 1024 took 0.52x the time of chunks of 128 positions x the whole vocabulary on gemma's head, which
# re-stream its 671 MB weight every 128 positions (docs/benchmarks.md section 12). On a GPU small tiles
# only add kernel launches: the larger ones there are a reasoned default, not a measurement.
TILES = {"cpu": (512, 1024), "cuda": (4096, 32768)}
# Prompts shorter than this are batched with the rest: re-running them costs less than a batch of its own.
MIN_SHARED_PROMPT = 64
# Loaded models by (path, revision, dtype option, device, trust_remote_code), while a backend holds them.
_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def tiled_logsumexp(hidden, logit_tile: Callable, vocab_size: int, tile: tuple[int, int]):
    """logsumexp over the vocabulary at each row of hidden, from logit_tile(rows, start, stop) blocks of
    tile = (positions, vocabulary slice): the full-vocabulary logits are never held at once."""
    import torch

    positions, width = tile
    parts = []
    for s in range(0, hidden.shape[0], positions):
        rows = hidden[s : s + positions]
        slices = [torch.logsumexp(logit_tile(rows, v, v + width), dim=-1) for v in range(0, vocab_size, width)]
        parts.append(torch.logsumexp(torch.stack(slices, dim=-1), dim=-1))
    return torch.cat(parts) if parts else torch.zeros(0, device=hidden.device)


def resolve_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """The torch dtype the weights are loaded in. int8 loads float32 weights: ``quantize_int8`` then converts
    the transformer body's linear layers after loading."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype == "int8":
        check_int8(device)
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto, float32, bfloat16, float16 or int8, got {dtype!r}") from None


def check_int8(device: str) -> None:
    """--dtype int8 uses torch's dynamic int8 linear layers (fbgemm/oneDNN), which run on a CPU only."""
    if device != "cpu":
        raise CdrError(
            f"--dtype int8 runs on a CPU only (torch's dynamic int8 linear layers have no {device} kernels); "
            "on a GPU use --dtype bfloat16 or float16"
        )


def _int8_linear_class():
    import torch

    class Int8Linear(torch.nn.Module):
        """A float32 ``nn.Linear`` computed in int8: the weight quantized once, symmetrically per output channel;
        the input quantized at each call by torch's dynamic int8 linear (fbgemm/oneDNN on x86: int8 products,
        int32 sums, float32 out; VNNI where the CPU has it). ``per_row``: each row is first divided by its own
        largest magnitude (and the product multiplied back), and two fixed rows pin the batch's range to [-1, 1],
        so one outlier token no longer coarsens every other token's steps and a row's result does not depend on
        the rows batched with it (padding included)."""

        def __init__(self, linear, per_row: bool):
            super().__init__()
            weight = linear.weight.detach().float()
            scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127
            zero = torch.zeros(weight.shape[0], dtype=torch.long)
            qweight = torch.quantize_per_channel(weight, scale.double(), zero, 0, torch.qint8)
            self._packed = torch.ops.quantized.linear_prepack(qweight, None)
            self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().float(), False)
            self.in_features, self.out_features, self.per_row = linear.in_features, linear.out_features, per_row
            anchor = torch.zeros(2, self.in_features)
            anchor[0, 0], anchor[1, 0] = 1.0, -1.0
            self.register_buffer("_anchor", anchor, persistent=False)

        def forward(self, x):
            shape = x.shape
            flat = x.reshape(-1, shape[-1]).float()
            if self.per_row:
                n = flat.shape[0]
                scale = torch.linalg.vector_norm(flat, float("inf"), dim=-1, keepdim=True).clamp_min(1e-30)
                buffer = torch.empty(n + 2, flat.shape[1], dtype=flat.dtype)
                torch.div(flat, scale, out=buffer[:n])
                buffer[n:] = self._anchor
                out = torch.ops.quantized.linear_dynamic(buffer, self._packed, True)[:n] * scale
            else:
                out = torch.ops.quantized.linear_dynamic(flat.contiguous(), self._packed, True)
            if self.bias is not None:
                out = out + self.bias
            return out.reshape(*shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8, per_row={self.per_row}"

    return Int8Linear


INT8_PER_ROW = True


def quantize_int8(module, per_row: bool | None = None) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an int8 one (``Int8Linear`` above), in place; returns how
    many. cdr passes the decoder (the transformer body) only: the LM head and the log-softmax stay float32.

    It uses torch's quantized ops (``quantize_per_channel``, ``quantized.linear_dynamic``): deprecated in favour
    of torchao, present in torch 2.13; where a torch no longer has them, the error says so."""
    import warnings

    import torch

    per_row = INT8_PER_ROW if per_row is None else per_row
    if not hasattr(torch.ops.quantized, "linear_dynamic") or "fbgemm" not in torch.backends.quantized.supported_engines:
        raise CdrError(
            f"--dtype int8 needs torch's dynamic int8 linear (torch.ops.quantized.linear_dynamic with fbgemm), "
            f"which torch {torch.__version__} here lacks; use --dtype float32"
        )
    cls = _int8_linear_class()
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, torch.nn.Linear)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecation notice for quantized tensors, once per layer
        for parent, name, child in targets:
            setattr(parent, name, cls(child, per_row))
    return len(targets)


class TransformersBackend(Backend):
    name = "hf"

    def __init__(self, source: ModelSource, options: BackendOptions):
        super().__init__(source, options)
        import torch
        from transformers import AutoModelForCausalLM

        if options.threads:
            torch.set_num_threads(options.threads)
        self.device = resolve_device(options.device)
        self.dtype = resolve_dtype(options.dtype, self.device)
        # part of the log-prob cache key and of the provenance: int8 numbers are not float32's
        self.precision = "int8" if options.dtype == "int8" else str(self.dtype).removeprefix("torch.")
        kwargs = {"dtype": self.dtype, "trust_remote_code": options.trust_remote_code}
        if source.kind == "gguf":
            path = str(converted_dir(source, "model"))
        else:
            path = source.path
            if source.revision:
                kwargs["revision"] = source.revision
        # one copy of the weights per process for the same files and precision: a model read early as its own
        # weak model (--weak-exit-layer) shares the strong model's weights instead of loading them again
        key = (path, source.revision, options.dtype, self.device, options.trust_remote_code)
        model = _LOADED.get(key)
        if model is None:
            try:
                model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
            except OSError as exc:
                raise ModelNotAvailable(f"could not load model '{source.name}' with transformers: {exc}") from None
            model = model.to(self.device).eval()
            _LOADED[key] = model
        self.model = model
        self.commit_hash = getattr(model.config, "_commit_hash", None)  # set for hub downloads
        self.decoder = self.model.get_decoder()
        self.head = self.model.get_output_embeddings()
        self.int8_layers = 0
        if self.precision == "int8":
            if self.decoder is self.model or any(m is self.head for m in self.decoder.modules()):
                raise CdrError(f"--dtype int8: cannot tell the body of '{source.name}' from its LM head; use float32")
            # the body only: the head (self.head, outside the decoder) and the log-softmax stay float32; a
            # shared model is converted once
            if not hasattr(model, "_cdr_int8_layers"):
                model._cdr_int8_layers = quantize_int8(self.decoder)
            self.int8_layers = model._cdr_int8_layers
        config = self.model.config
        self.softcap = getattr(config, "final_logit_softcapping", None)
        # Cohere multiplies logits by logit_scale, Granite divides by logits_scaling.
        self.scale = float(getattr(config, "logit_scale", None) or 1.0) / float(
            getattr(config, "logits_scaling", None) or 1.0
        )
        self.vocab_size = self.head.weight.shape[0]
        self.pad_id = config.pad_token_id if isinstance(config.pad_token_id, int) else 0
        self.response_head_only = isinstance(self.head, torch.nn.Linear) and self._head_path_matches_full_forward()
        if options.exit_layer is not None:
            # checked above on the whole decoder; from here on, the decoder stops after exit_layer layers
            self.decoder = self._exited_decoder(options.exit_layer)
            self.reading = f"exit-layer-{options.exit_layer}"
        import inspect

        # transformers renamed past_key_values to cache (5.x); accept either
        parameters = inspect.signature(self.decoder.forward).parameters
        self._cache_arg = "cache" if "cache" in parameters else "past_key_values"

    def _exited_decoder(self, layers: int):
        """The decoder read after its first ``layers`` layers: the same modules (embeddings, those layers, the
        final norm), so the hidden state then goes through the final norm and the LM head as the last layer's
        would (layer-contrast decoding, DoLa: Chuang et al., 2024). Shares every weight with the whole model."""
        import copy

        import torch

        name = self.source.name
        stack = getattr(self.decoder, "layers", None)
        total = getattr(self.decoder.config, "num_hidden_layers", None)
        if not isinstance(stack, torch.nn.ModuleList) or not isinstance(total, int) or len(stack) != total:
            raise ExitLayerError(
                layers, f"cannot find the decoder layers of '{name}' (no .layers list); unset it", show_value=False
            )
        if not self.response_head_only:
            raise ExitLayerError(
                layers,
                f"'{name}' post-processes its logits in a way cdr does not reproduce, so it cannot be read at an "
                "earlier layer; unset it",
                show_value=False,
            )
        if not 1 <= layers < total:
            raise ExitLayerError(layers, f"'{name}' has {total} decoder layers; expected 1 to {total - 1}")
        config = copy.copy(self.decoder.config)
        config.num_hidden_layers = layers
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[:layers]  # gemma-3: which layers attend locally
        exited = copy.copy(self.decoder)  # a new module object over the same parameters
        exited._modules = dict(self.decoder._modules)
        exited.layers = stack[:layers]
        exited.config = config
        return exited

    @property
    def max_length(self) -> int | None:
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def response_logprobs(
        self, requests: Sequence[LogprobRequest], on_progress: Callable[[int], None] | None = None
    ) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(requests)
        alone = []
        for prefix, members in self._shared_prompts(requests):
            if members is None:
                alone.extend(prefix)
                continue
            for i, lp in zip(members, self._score_shared(prefix, [requests[i] for i in members])):
                out[i] = lp
            if on_progress:
                on_progress(len(members))
        for batch in self._batches([requests[i] for i in alone]):
            scored = self._score_batch([requests[alone[j]] for j in batch])
            for j, lp in zip(batch, scored):
                out[alone[j]] = lp
            if on_progress:
                on_progress(len(batch))
        return out  # type: ignore[return-value]

    def _shared_prompts(self, requests: Sequence[LogprobRequest]):
        """Yield (prompt ids, request indices) for groups worth sharing, then ([indices], None) for the rest.

        Responses to one prompt (chosen/rejected, best-of-N, a long customized context) run the prompt once
        and reuse its key/value cache; it pays when the prompt is long relative to the per-batch overhead."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(tuple(r.token_ids[: r.response_start]), []).append(i)
        rest = []
        for prefix, members in groups.items():
            if (
                self.options.prompt_sharing
                and self.response_head_only
                and len(members) > 1
                and len(prefix) >= MIN_SHARED_PROMPT
            ):
                yield prefix, members
            else:
                rest.extend(members)
        yield rest, None

    def _score_shared(self, prefix: tuple[int, ...], batch: list[LogprobRequest]) -> list[np.ndarray]:
        import copy

        import torch

        p = len(prefix)
        with torch.inference_mode():
            first = self.decoder(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            prompt_cache, last = first.past_key_values, first.last_hidden_state[0, -1:]
            # suffix batches within the token budget, counting the prompt each row attends to
            order, start = sorted(range(len(batch)), key=lambda i: -len(batch[i].token_ids)), 0
            results: dict[int, np.ndarray] = {}
            while start < len(order):
                width = len(batch[order[start]].token_ids) - p
                k = max(1, min(len(order) - start, self.options.batch_tokens // (p + width)))
                chunk = order[start : start + k]
                start += k
                ids = torch.full((k, width), self.pad_id, dtype=torch.long)
                mask = torch.zeros((k, p + width), dtype=torch.long)
                mask[:, :p] = 1
                for b, i in enumerate(chunk):
                    suffix = batch[i].token_ids[p:]
                    ids[b, : len(suffix)] = torch.tensor(suffix)
                    mask[b, p : p + len(suffix)] = 1
                cache = copy.deepcopy(prompt_cache)
                cache.batch_repeat_interleave(k)
                positions = torch.arange(p, p + width, device=self.device)[None].expand(k, -1)
                hidden = self.decoder(
                    input_ids=ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=positions,
                    use_cache=True,
                    **{self._cache_arg: cache},
                ).last_hidden_state
                # one head pass for the whole suffix batch: the first suffix token is predicted by the prompt's
                # last position
                suffixes = [batch[i].token_ids[p:] for i in chunk]
                rows = torch.cat([torch.cat([last, hidden[b, : len(x) - 1]]) for b, x in enumerate(suffixes)])
                target = torch.tensor([t for x in suffixes for t in x], device=self.device)
                flat = self._token_logprobs(rows, target).double().cpu().numpy()
                for i, lp in zip(chunk, np.split(flat, np.cumsum([len(x) for x in suffixes])[:-1])):
                    results[i] = lp
        return [results[i] for i in range(len(batch))]

    def _batches(self, requests: Sequence[LogprobRequest]) -> list[list[int]]:
        """Longest first (an out-of-memory shows up at once), each batch within the padded-token budget."""
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].token_ids), reverse=True)
        batches: list[list[int]] = []
        for i in order:
            if batches:
                longest = len(requests[batches[-1][0]].token_ids)
                if (len(batches[-1]) + 1) * longest <= self.options.batch_tokens:
                    batches[-1].append(i)
                    continue
            batches.append([i])
        return batches

    def _score_batch(self, batch: list[LogprobRequest]) -> list[np.ndarray]:
        import torch

        width = max(len(r.token_ids) for r in batch)
        ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        rows, cols, targets, sizes = [], [], [], []
        for b, r in enumerate(batch):
            n = len(r.token_ids)
            ids[b, :n] = torch.tensor(r.token_ids)
            mask[b, :n] = 1
            # position t predicts token t + 1: the response tokens start..n-1 are predicted at start-1..n-2
            rows.extend([b] * (n - r.response_start))
            cols.extend(range(r.response_start - 1, n - 1))
            targets.extend(r.token_ids[r.response_start :])
            sizes.append(n - r.response_start)
        ids, mask = ids.to(self.device), mask.to(self.device)
        target = torch.tensor(targets, device=self.device)
        with torch.inference_mode():
            if self.response_head_only:
                hidden = self.decoder(input_ids=ids, attention_mask=mask).last_hidden_state
                picked = hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)]
                logprobs = self._token_logprobs(picked, target)
            else:
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                picked = logits[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)].float()
                logprobs = picked.gather(1, target[:, None])[:, 0] - torch.logsumexp(picked, dim=-1)
        flat = logprobs.double().cpu().numpy()
        return list(np.split(flat, np.cumsum(sizes)[:-1]))

    def _postprocess(self, logits):
        import torch

        if self.scale != 1.0:
            logits = logits * self.scale
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _logit_tile(self, hidden, start: int, stop: int):
        """Logits of the vocabulary slice [start, stop) at each row of hidden."""
        import torch.nn.functional as F

        bias = self.head.bias
        logits = F.linear(hidden, self.head.weight[start:stop], None if bias is None else bias[start:stop])
        return self._postprocess(logits.float())

    def _token_logprobs(self, hidden, target):
        """log p(target) at each row: the target's logit as one dot product, minus a logsumexp over vocabulary
        slices."""
        weight, bias = self.head.weight, self.head.bias
        picked = (hidden.float() * weight[target].float()).sum(-1)
        if bias is not None:
            picked = picked + bias[target].float()
        tile = TILES.get(hidden.device.type, TILES["cpu"])
        return self._postprocess(picked) - tiled_logsumexp(hidden, self._logit_tile, self.vocab_size, tile)

    def next_token_top_logprobs(
        self, token_ids: Sequence[int], k: int, last_only: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        ids = torch.tensor([list(token_ids)], device=self.device)
        chunk = max(1, LOGIT_BUDGET // self.vocab_size)
        first = len(token_ids) - 1 if last_only else 0
        top_ids, top_lps = [], []
        with torch.inference_mode():
            if self.response_head_only:
                hidden = self.decoder(input_ids=ids).last_hidden_state[0, first:]
                logit_chunks = (
                    self._logit_tile(hidden[s : s + chunk], 0, self.vocab_size)
                    for s in range(0, hidden.shape[0], chunk)
                )
            else:
                logits = self.model(input_ids=ids).logits[0, first:].float()
                logit_chunks = (logits[s : s + chunk] for s in range(0, logits.shape[0], chunk))
            for logits in logit_chunks:
                lps = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
                values, indices = lps.topk(k, dim=-1)
                top_ids.append(indices.cpu().numpy())
                top_lps.append(values.double().cpu().numpy())
        return np.concatenate(top_ids), np.concatenate(top_lps)

    def _head_path_matches_full_forward(self) -> bool:
        """Check once that decoder + head reproduces the model's own logits.

        Architectures may post-process logits in ways we do not know about; for those we fall back to
        the model's full forward (correct, slower) rather than return wrong numbers.
        """
        import torch

        n = 12
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (1, n), generator=generator).to(self.device)
        with torch.inference_mode():
            full = self.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            hidden = self.decoder(input_ids=ids).last_hidden_state[0, :-1]
            target = ids[0, 1:]
            ours = self._token_logprobs(hidden, target)
        ref = full.gather(1, target[:, None])[:, 0]
        tol = 1e-3 if self.dtype == torch.float32 else 5e-2
        ok = bool(torch.allclose(ours, ref, atol=tol, rtol=0))
        if not ok:
            import warnings

            warnings.warn(
                f"{self.source.name}: the response-only LM head does not reproduce the model's logits "
                f"(max diff {float((ours - ref).abs().max()):.2e}); using the full forward pass instead",
                stacklevel=2,
            )
        return ok and not math.isnan(float(ours.sum()))
