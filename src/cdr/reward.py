"""The density-ratio reward: r(x, y) = log p_strong(y | x) - log p_weak(y | x) over the response tokens.

``ModelScorer`` holds one model (tokenizer, renderer, backend) and returns response log-probs;
``DensityRatio`` pairs two of them and combines their log-probs into a reward variant.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np

from cdr._version import __version__
from cdr.backends import LogprobRequest, load_backend
from cdr.backends.vllm import core_range
from cdr.cache import LogprobCache
from cdr.config import RewardConfig
from cdr.conversation import Conversation, Message
from cdr.errors import CdrError, ExitLayerError, ModelNotAvailable
from cdr.gguf_tokenizer import verify as verify_tokenizer
from cdr.models import ModelSource, cache_dir, converted_dir, quiet_transformers, resolve_model
from cdr.recipes import CallableRouter, Customized, Recipe, build_router, customize, load_recipe, route
from cdr.rendering import Renderer
from cdr.span import ResponseSpan, Tokenization, Unscorable, locate_response
from cdr.variants import combine  # noqa: F401 (re-exported: ``from cdr.reward import combine``)

CACHE_SLICE = 256  # responses per backend call when filling the cache


@dataclass(frozen=True)
class ResponseLogprobs:
    """One model's log-probs of one response's tokens."""

    token_ids: tuple[int, ...]
    logprobs: np.ndarray
    truncated: bool
    boundary: str

    @property
    def total(self) -> float:
        return float(self.logprobs.sum())

    @property
    def n_tokens(self) -> int:
        return len(self.logprobs)


# The figures of one scored response, in the order they are reported: ``cdr score``'s columns
# (pipelines.score.reward_columns) and the service's RewardItem (serve.protocol). RewardResult holds them,
# and ``details``; tests check that the three agree.
RESULT_FIELDS = (
    "reward",
    "strong_logprob",
    "weak_logprob",
    "strong_tokens",
    "weak_tokens",
    "truncated",
    "domain",
    "error",
)


@dataclass
class RewardResult:
    reward: float | None
    strong_logprob: float | None
    weak_logprob: float | None
    strong_tokens: int | None
    weak_tokens: int | None
    truncated: bool = False
    error: str | None = None
    domain: str | None = None  # the recipe domain the prompt was routed to (None without a recipe)
    details: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if out["details"] is None:
            del out["details"]
        return out

    def fields_dict(self) -> dict[str, Any]:
        """The RESULT_FIELDS, in that order."""
        return {name: getattr(self, name) for name in RESULT_FIELDS}


@lru_cache(maxsize=16)
def load_tokenizer(path: str, fingerprint: str, trust_remote_code: bool, **kwargs):
    """One tokenizer object per process for the same files (the fingerprint hashes them): gemma's
    262,144-word tokenizer takes seconds to load, and scorers only read it (no padding/truncation state)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)


class ModelScorer:
    """One side of the pair: renders, tokenizes, locates the response and asks its backend for log-probs."""

    def __init__(
        self,
        source: ModelSource,
        backend_name: str,
        config: RewardConfig,
        cache: LogprobCache | None = None,
        role: str = "strong",
    ):
        quiet_transformers()
        self.source = source
        source.show_notice_once()
        self.fingerprint = source.fingerprint()
        if source.kind == "gguf":
            tok_path, kwargs = str(converted_dir(source, "tokenizer")), {}
        else:
            tok_path, kwargs = source.path, ({"revision": source.revision} if source.revision else {})
        try:
            self.tokenizer = load_tokenizer(
                tok_path, self.fingerprint, config.options_for(role).trust_remote_code, **kwargs
            )
        except OSError as exc:
            raise ModelNotAvailable(f"could not load the tokenizer of '{source.name}': {exc}") from None
        # a tokenizer rebuilt from a GGUF file is checked against llama.cpp's (docs/tokenization.md)
        self.tokenizer_check = (
            verify_tokenizer(self.tokenizer, Path(tok_path), source.gguf_path, source.name)
            if source.kind == "gguf"
            else None
        )
        self.tokenization = Tokenization(self.tokenizer)
        self.renderer = Renderer(self.tokenizer, config.plain_format)
        options = config.options_for(role)
        try:
            self.backend = load_backend(backend_name, source, options)
        except ExitLayerError as exc:
            raise exc.for_side(role) from None  # name the flag the user gave
        if source.kind == "hub" and self.backend.commit_hash:
            # 'main' moves; the commit the weights came from does not
            self.fingerprint = f"{source.path}@{self.backend.commit_hash}"
        self.cache = cache
        # what makes two log-prob computations interchangeable: the weights, the backend, its precision and how
        # the model is read (an early exit); a whole model's key is as it always was
        self.cache_key = f"{self.fingerprint}|{self.backend.name}|{self.backend.precision}"
        if self.backend.reading:
            self.cache_key += f"|{self.backend.reading}"
        limits = [x for x in (config.max_length, self.backend.max_length) if x]
        self.max_length = min(limits) if limits else None

    @property
    def tokenizer_origin(self) -> str:
        """Where the tokens come from: the model's own tokenizer files, or cdr's conversion of a GGUF file."""
        if self.tokenizer_check is None:
            return "model files"
        return f"converted from GGUF by cdr (v{self.tokenizer_check.conversion_version})"

    def span(self, conversation: Conversation, renderer: Renderer, include_eot: bool) -> ResponseSpan:
        return locate_response(self.tokenization, renderer.render(conversation), include_eot, self.max_length)

    def logprobs(
        self,
        conversations: Sequence[Conversation],
        renderer: Renderer,
        include_eot: bool,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[ResponseLogprobs | Unscorable]:
        out: list[ResponseLogprobs | Unscorable] = []
        spans: list[tuple[int, ResponseSpan]] = []
        for i, conv in enumerate(conversations):
            try:
                spans.append((i, self.span(conv, renderer, include_eot)))
                out.append(None)  # type: ignore[arg-type]
            except Unscorable as exc:
                out.append(exc)
        requests = [LogprobRequest(s.token_ids, s.start) for _, s in spans]
        scored = self._cached_logprobs(requests, on_progress)
        if on_progress and len(requests) < len(conversations):
            on_progress(len(conversations) - len(requests))
        for (i, s), lp in zip(spans, scored):
            out[i] = ResponseLogprobs(s.token_ids[s.start :], lp, s.truncated, s.method)
        return out

    def _cached_logprobs(self, requests: list[LogprobRequest], on_progress) -> list[np.ndarray]:
        """Each distinct request is computed once: from the cache if it has it, else by the backend."""
        unique = list(dict.fromkeys(requests))
        found = self.cache.get_many(self.cache_key, unique) if self.cache is not None else [None] * len(unique)
        known = {r: lp for r, lp in zip(unique, found) if lp is not None}
        todo = [r for r in unique if r not in known]
        if on_progress and len(todo) < len(requests):
            on_progress(len(requests) - len(todo))
        # in slices, each saved as soon as it is done: an interrupted long call loses at most one slice
        for s in range(0, len(todo), CACHE_SLICE):
            part = todo[s : s + CACHE_SLICE]
            computed = self.backend.response_logprobs(part, on_progress=on_progress)
            if self.cache is not None:
                self.cache.put_many(self.cache_key, part, computed)
            known.update(zip(part, computed))
        return [known[r] for r in requests]

    def token_strings(self, token_ids: Iterable[int]) -> list[str]:
        return [self.tokenizer.decode([t]) for t in token_ids]


def overlap_cores(config: RewardConfig) -> RewardConfig:
    """With --overlap, vLLM engine processes on a CPU bind their threads to cores: unless told otherwise, the
    strong engine gets cores 0..t-1 and the weak one the next t (t = each side's threads), not both the first."""
    strong, weak = config.strong_options, config.weak_options
    if not (strong.vllm_multiprocessing and weak.vllm_multiprocessing) or not (strong.threads and weak.threads):
        return config
    if strong.vllm_cpu_cores or weak.vllm_cpu_cores or strong.threads + weak.threads > (os.cpu_count() or 1):
        return config  # chosen by hand, or not enough cores for two separate sets
    first, second = core_range(0, strong.threads), core_range(strong.threads, weak.threads)
    return config.replace(strong_vllm_cpu_cores=first, weak_vllm_cpu_cores=second)


def open_cache(setting: str | None) -> LogprobCache | None:
    if setting in (None, "none", ""):
        return None
    return LogprobCache(cache_dir() / "logprobs.sqlite" if setting == "default" else setting)


def as_conversations(items: Iterable[Any]) -> list[Conversation]:
    """Accept Conversation objects or OpenAI-style message lists; name the bad item in errors."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Conversation):
            out.append(item)
            continue
        out.append(Conversation.from_messages(item, field=f"conversations[{i}]"))
    return out


@dataclass
class PairLogprobs:
    """Both models' response log-probs for a list of conversations, and the domain each was routed to."""

    strong: list[ResponseLogprobs | Unscorable]
    weak: list[ResponseLogprobs | Unscorable]
    domains: list[str | None]


def without_prompt(conversation: Conversation) -> Conversation:
    """``--weak-prompt empty``: the response after one empty user turn (no system turn, no history, no recipe
    context). An empty turn rather than none, so that every chat template renders it as it renders a reply."""
    return Conversation((Message("user", ""), conversation.messages[-1]))


def ratio_clipped(
    strong: list[ResponseLogprobs | Unscorable],
    weak: list[ResponseLogprobs | Unscorable],
    clip: float | None = None,
    winsor: float | None = None,
) -> list[ResponseLogprobs | Unscorable]:
    """``--token-ratio-clip`` / ``--token-ratio-winsor``: the weak side's per-token log-probs moved so that each
    token's log-ratio (strong minus weak) lies in [-clip, clip], or within the response's own [winsor, 1 - winsor]
    quantiles of it; the variants then sum or average the bounded ratios. Needs the same response tokens on both
    sides; a row where they differ is unscorable rather than compared token by token across two tokenizations."""
    out: list[ResponseLogprobs | Unscorable] = []
    for s, w in zip(strong, weak):
        if isinstance(s, Exception) or isinstance(w, Exception):
            out.append(w)
        elif s.token_ids != w.token_ids:
            out.append(Unscorable("token-level ratio options: the two models read this response as different tokens"))
        else:
            ratio = s.logprobs - w.logprobs
            if winsor is not None and len(ratio):
                ratio = np.clip(ratio, *np.quantile(ratio, [winsor, 1 - winsor]))
            if clip is not None:
                ratio = np.clip(ratio, -clip, clip)
            out.append(dataclasses.replace(w, logprobs=s.logprobs - ratio))
    return out


def floored(results: list[ResponseLogprobs | Unscorable], floor: float) -> list[ResponseLogprobs | Unscorable]:
    """``--token-floor``: each token's log-prob raised to at least -floor (the cache keeps the exact values)."""
    return [
        r if isinstance(r, Exception) else dataclasses.replace(r, logprobs=np.maximum(r.logprobs, -floor))
        for r in results
    ]


class DensityRatio:
    """A training-free reward from two language models.

    >>> reward = DensityRatio(strong="default", weak="default")
    >>> conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    >>> [r.reward for r in reward.score([conversation])]

    ``recipe`` (a preset name, a YAML path or a ``Recipe``) customizes the context per domain; ``router``
    replaces the recipe's router with your own (a ``Router`` or a function ``f(messages) -> domain name``).
    """

    def __init__(
        self,
        strong: str = "default",
        weak: str = "default",
        *,
        config: RewardConfig | None = None,
        router: Any = None,
        **options: Any,
    ):
        if config is None:
            config = RewardConfig.from_flat(options, strong=strong, weak=weak)
        elif options:
            config = config.replace(**options)
        if config.overlap and config.strong_options.threads is None:
            # torch's thread setting is per process: two models computing at once each get half the cores
            config = config.replace(threads=max(1, (os.cpu_count() or 2) // 2))
        if config.overlap:
            config = overlap_cores(config)
        self._build(config, router, open_cache(config.cache), {})
        # an ensemble (--extra-pairs): the further pairs share this one's cache and every model they have in common
        self.pairs_weights = config.weights()
        self.extra_pairs = [DensityRatio._member(c, router, self.cache, self._scorers) for c in config.pair_configs()]

    @classmethod
    def _member(cls, config: RewardConfig, router: Any, cache, scorers: dict) -> DensityRatio:
        member = cls.__new__(cls)
        member._build(config, router, cache, scorers)
        member.pairs_weights, member.extra_pairs = [1.0], []
        return member

    def _build(self, config: RewardConfig, router: Any, cache: LogprobCache | None, scorers: dict) -> None:
        self.config = config
        self.recipe: Recipe = load_recipe(config.recipe)
        self.cache = cache
        self._scorers = scorers
        self.strong = self._scorer("strong")
        self.weak = self._scorer("weak")
        # shared: the paper's release code renders once with the strong model's template, for both models.
        self.weak_renderer = self.strong.renderer if config.rendering == "shared" else self.weak.renderer
        if router is not None and not hasattr(router, "route"):
            router = CallableRouter(router)
        if router is None:
            router = build_router(self.recipe, self._router_scorer, bool(config.allow_python_router))
        self.router = router
        if config.token_ratio_clip is not None or config.token_ratio_winsor is not None:
            self._check_same_tokens()

    def _scorer(self, role: str) -> ModelScorer:
        """The pair's model on one side; a model that another pair of the ensemble already loaded, read the same
        way (backend, options, length limit, plain format), is that pair's scorer."""
        c = self.config
        source = resolve_model(c.strong if role == "strong" else c.weak, role)
        # keyed on the resolved model, not the spelling: 'default' is a different model on each side
        model = (source.kind, source.path, source.revision)
        key = (model, c.backend_for(role), repr(c.options_for(role)), c.max_length, repr(c.plain_format))
        if key not in self._scorers:
            self._scorers[key] = ModelScorer(source, c.backend_for(role), c, self.cache, role=role)
        return self._scorers[key]

    @property
    def pairs(self) -> list[DensityRatio]:
        """The pairs whose rewards make this one: itself, then those of --extra-pairs."""
        return [self, *self.extra_pairs]

    def view(self, **changes: Any) -> DensityRatio:
        """The same loaded models scoring with other reward-level options (the server's end-of-turn setting)."""
        out = copy.copy(self)
        out.config = self.config.replace(**changes)
        out.extra_pairs = [copy.copy(p) for p in self.extra_pairs]
        for pair in out.extra_pairs:
            pair.config = pair.config.replace(**changes)
        return out

    def _check_same_tokens(self) -> None:
        """--token-ratio-clip and --token-ratio-winsor compare the models token by token: refuse, before any
        scoring, a pair that reads a response as different tokens (two tokenizers, or two renderings that end a
        reply differently)."""
        probe = Conversation((Message("user", "Is 7 prime?"), Message("assistant", "Yes.\n\n7 is prime.")))
        include_eot = self.config.include_eot
        s = self.strong.span(probe, self.strong.renderer, include_eot)
        w = self.weak.span(probe, self.weak_renderer, include_eot)
        if s.token_ids[s.start :] != w.token_ids[w.start :]:
            name = "token_ratio_clip" if self.config.token_ratio_clip is not None else "token_ratio_winsor"
            raise CdrError(
                f"{name} (--{name.replace('_', '-')}) needs a pair that reads a response as the same tokens (one "
                f"tokenizer, one rendering); '{self.strong.source.name}' and '{self.weak.source.name}' do not "
                "(for example use the strong model as --weak with --weak-exit-layer)"
            )

    def _router_scorer(self, model: str) -> ModelScorer:
        """The scorer of an LLM router: one of the pair, or another model sharing the pair's options and cache."""
        if model in ("strong", "weak"):
            return self.strong if model == "strong" else self.weak
        return ModelScorer(resolve_model(model, "router"), self.config.backend, self.config, self.cache, role="router")

    @property
    def provenance(self) -> dict[str, Any]:
        """What produced a score: recorded in every output so a score can always be traced to its pair."""
        c = self.config
        return {
            "strong": c.strong if c.strong != "default" else self.strong.source.name,
            "strong_sha256": self.strong.fingerprint,
            "strong_backend": self.strong.backend.name,
            "strong_precision": self.strong.backend.precision,
            "weak": c.weak if c.weak != "default" else self.weak.source.name,
            "weak_sha256": self.weak.fingerprint,
            "weak_backend": self.weak.backend.name,
            "weak_precision": self.weak.backend.precision,
            # only when set, so outputs and resume keys of runs without them stay as they were
            **{
                f"{side}_exit_layer": c.options_for(side).exit_layer
                for side in ("strong", "weak")
                if c.options_for(side).exit_layer is not None
            },
            "strong_tokenizer": self.strong.tokenizer_origin,
            "weak_tokenizer": self.weak.tokenizer_origin,
            "rendering": c.rendering,
            "strong_template": self.strong.renderer.description,
            "strong_template_sha256": self.strong.renderer.sha256(),
            "weak_template": self.weak_renderer.description,
            "weak_template_sha256": self.weak_renderer.sha256(),
            "include_eot": c.include_eot,
            "variant": c.variant,
            # only when set, so outputs and resume keys of runs without it stay as they were
            **({"token_floor": c.token_floor} if c.token_floor is not None else {}),
            **({"weak_prompt": c.weak_prompt} if c.weak_prompt != "full" else {}),
            **({"token_ratio_clip": c.token_ratio_clip} if c.token_ratio_clip is not None else {}),
            **({"token_ratio_winsor": c.token_ratio_winsor} if c.token_ratio_winsor is not None else {}),
            "recipe": self.recipe.name,
            "recipe_sha256": self.recipe.sha256(),
            "router": self._router_name(),
            # an ensemble: every further pair's own provenance and the weights (only when set, as above)
            **(
                {"extra_pairs": [p.provenance for p in self.extra_pairs], "pair_weights": self.pairs_weights}
                if self.extra_pairs
                else {}
            ),
            "cdr_version": __version__,
        }

    def _router_name(self) -> str | None:
        if not self.recipe.customizes:
            return None
        if isinstance(self.router, CallableRouter):
            return f"python:{self.router.name}"
        spec = self.recipe.router
        if self.router is not None and spec.kind == "none":
            return type(self.router).__name__
        return {"llm": f"llm:{spec.model}", "column": f"column:{spec.column}"}.get(spec.kind, spec.kind)

    def customize(
        self, conversations: Sequence[Conversation], rows: Sequence[dict | None] | None = None
    ) -> list[Customized]:
        """Route each conversation's prompt to a domain and put that domain's context in front, per model.
        ``rows`` (the input rows) are only read by a column router."""
        domains = route(self.recipe, self.router, [c.prompt for c in conversations], rows)
        return [customize(self.recipe, c, d) for c, d in zip(conversations, domains)]

    def pairs_logprobs(
        self,
        conversations: Sequence[Conversation],
        on_progress: Callable[[int], None] | None = None,
        rows: Sequence[dict | None] | None = None,
    ) -> list[PairLogprobs]:
        """Each pair's log-probs, this pair first (one pair without --extra-pairs). A model pass that two pairs
        share (the same model read the same way over the same conversations) runs once."""
        if not self.extra_pairs:
            return [self.model_logprobs(conversations, on_progress, rows)]
        share = len(self.pairs)
        progress = None if on_progress is None else (lambda n: on_progress(n / share))
        done: dict = {}
        return [pair.model_logprobs(conversations, progress, rows, done) for pair in self.pairs]

    def model_logprobs(
        self,
        conversations: Sequence[Conversation],
        on_progress: Callable[[int], None] | None = None,
        rows: Sequence[dict | None] | None = None,
        done: dict | None = None,
    ) -> PairLogprobs:
        """This pair's response log-probs, from which any variant (or single-model baseline) can be derived.
        ``done`` holds the passes already run for other pairs of an ensemble (see ``pairs_logprobs``)."""
        custom = self.customize(conversations, rows)
        weak_side = [c.weak for c in custom]
        if self.config.weak_prompt == "empty":
            weak_side = [without_prompt(c) for c in conversations]
        passes = (
            partial(self._side, self.strong, [c.strong for c in custom], self.strong.renderer, done),
            partial(self._side, self.weak, weak_side, self.weak_renderer, done),
        )
        if self.config.overlap:
            lock = threading.Lock()

            def progress(n: int) -> None:
                with lock:
                    on_progress(n)

            with ThreadPoolExecutor(2, thread_name_prefix="cdr-model") as pool:
                futures = [pool.submit(run, progress if on_progress else None) for run in passes]
                strong, weak = (f.result() for f in futures)
        else:
            strong, weak = (run(on_progress) for run in passes)
        if self.config.token_floor is not None:
            strong, weak = floored(strong, self.config.token_floor), floored(weak, self.config.token_floor)
        if self.config.token_ratio_clip is not None or self.config.token_ratio_winsor is not None:
            weak = ratio_clipped(strong, weak, self.config.token_ratio_clip, self.config.token_ratio_winsor)
        return PairLogprobs(strong, weak, [c.domain for c in custom])

    def _side(self, scorer: ModelScorer, conversations, renderer: Renderer, done: dict | None, on_progress):
        """One model's pass, or the same pass another pair of the ensemble already ran."""
        include_eot = self.config.include_eot
        key = (id(scorer), id(renderer), include_eot, tuple(conversations))
        if done is not None and key in done:
            if on_progress:
                on_progress(len(conversations))
            return done[key]
        out = scorer.logprobs(conversations, renderer, include_eot, on_progress)
        if done is not None:
            done[key] = out
        return out

    def score(
        self,
        conversations: Iterable[Any],
        *,
        return_tokens: bool = False,
        progress: bool = False,
        on_progress: Callable[[int], None] | None = None,
        rows: Sequence[dict | None] | None = None,
    ) -> list[RewardResult]:
        """Score conversations whose last message is the assistant response. One result per conversation, in order.

        ``progress`` shows a bar over model passes (2 per conversation); ``return_tokens`` adds per-token
        log-probs for each model in ``result.details``; ``rows`` feed a recipe's column router.
        """
        convs = as_conversations(conversations)
        bar = None
        if progress and on_progress is None:
            from tqdm.auto import tqdm

            bar = tqdm(total=2 * len(convs), unit="resp", desc="scoring")
            on_progress = bar.update
        try:
            logprobs = self.pairs_logprobs(convs, on_progress, rows)
        finally:
            if bar is not None:
                bar.close()
        per_pair = [
            [pair._result(s, w, d, return_tokens) for s, w, d in zip(lp.strong, lp.weak, lp.domains)]
            for pair, lp in zip(self.pairs, logprobs)
        ]
        if len(per_pair) == 1:
            return per_pair[0]
        return [self._ensemble_result(list(results)) for results in zip(*per_pair)]

    def _ensemble_result(self, results: list[RewardResult]) -> RewardResult:
        """The ensemble's reward: the weighted mean of the pairs' rewards; the log-probs and token counts reported
        beside it are this (the first) pair's; ``details`` adds each pair's reward."""
        first = results[0]
        errors = [f"pair {i}: {r.error.removeprefix('unscorable: ')}" for i, r in enumerate(results, 1) if r.error]
        if errors:
            return RewardResult(
                None, None, None, None, None, error="unscorable: " + "; ".join(errors), domain=first.domain
            )
        reward = sum(w * r.reward for w, r in zip(self.pairs_weights, results))
        details = None if first.details is None else {**first.details, "pair_rewards": [r.reward for r in results]}
        return dataclasses.replace(
            first, reward=float(reward), truncated=any(r.truncated for r in results), details=details
        )

    def _result(self, s, w, domain: str | None, return_tokens: bool) -> RewardResult:
        errors = [f"{role}: {x}" for role, x in (("strong", s), ("weak", w)) if isinstance(x, Unscorable)]
        if errors:
            return RewardResult(None, None, None, None, None, error="unscorable: " + "; ".join(errors), domain=domain)
        reward = combine(self.config.variant, s.total, s.n_tokens, w.total, w.n_tokens)
        details = None
        if return_tokens:
            details = {
                role: [
                    {"token": text, "id": tid, "logprob": float(lp)}
                    for text, tid, lp in zip(scorer.token_strings(x.token_ids), x.token_ids, x.logprobs)
                ]
                for role, scorer, x in (("strong", self.strong, s), ("weak", self.weak, w))
            }
        return RewardResult(
            reward=float(reward),
            strong_logprob=s.total,
            weak_logprob=w.total,
            strong_tokens=s.n_tokens,
            weak_tokens=w.n_tokens,
            truncated=s.truncated or w.truncated,
            domain=domain,
            details=details,
        )
