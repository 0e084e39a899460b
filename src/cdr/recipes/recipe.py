"""A reward recipe: per-domain criteria and in-context exemplars, where they go, and how a prompt picks its domain.

Recipes are YAML files (or the built-in presets in ``presets/``). Loading validates every key and value and
names the key and its line on a mistake. ``extends: <preset or path>`` starts from another recipe: top-level
keys replace the base's, ``domains`` are merged by name (a domain given replaces the base's domain).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from cdr.errors import CdrError

PLACEMENTS = ("both", "strong", "separate")
ROUTER_KINDS = ("none", "rules", "llm", "column", "python")
WEAK_EXEMPLARS = ("none", "good", "bad")
DEFAULT_RECIPE = "vanilla"


class RecipeError(CdrError):
    def __init__(self, source: str, line: int | None, key: str, message: str):
        where = f"{source}, line {line}" if line else source
        super().__init__(f"{where}: '{key}': {message}")


@dataclass(frozen=True)
class Exemplar:
    """One in-context block: a request, a good and a bad answer to it, and why the good one is better."""

    prompt: str
    good: str
    bad: str
    explanation: str


@dataclass(frozen=True)
class Context:
    """What one model sees before the conversation: criteria as a system message and exemplar turns."""

    criteria: str | None = None
    exemplars: str = "good"  # which answer of each block is the assistant's turn: good, bad or none
    contrast: bool = True  # also show each block's bad answer and why (in the system message)


@dataclass(frozen=True)
class Domain:
    name: str
    description: str
    criteria: str | None
    exemplars: tuple[Exemplar, ...]
    weak: Context | None = None  # placement 'separate': the weak model's own context (None: no context)

    def strong_context(self, use_criteria: bool) -> Context:
        return Context(self.criteria if use_criteria else None, "good", contrast=True)


@dataclass(frozen=True)
class RouterSpec:
    kind: str = "none"
    rules: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()  # (domain, keywords, patterns), in order
    model: str = "strong"  # llm: strong, weak, or a model name/path of its own
    max_chars: int = 2000  # llm: the request text is cut to its first this many characters
    column: str = "domain"  # column: the input column holding the domain
    callable: str | None = None  # python: "package.module:function"


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str = ""
    placement: str = "both"
    exemplars: int = 1  # exemplar blocks per prompt
    use_criteria: bool = True
    seed: int = 0
    fallback: str | None = None
    router: RouterSpec = field(default_factory=RouterSpec)
    domains: dict[str, Domain] = field(default_factory=dict)

    @property
    def customizes(self) -> bool:
        return bool(self.domains)

    def canonical(self) -> dict[str, Any]:
        return asdict(self)

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml")
        for p in resources.files("cdr.recipes").joinpath("presets").iterdir()
        if p.name.endswith(".yaml")
    )


def load_recipe(spec: str | Path | Recipe | None) -> Recipe:
    """A preset name (vanilla, paper, contrastive, ...), a YAML path, or a Recipe as is."""
    if isinstance(spec, Recipe):
        return spec
    data, lines, source = _read(str(spec or DEFAULT_RECIPE), seen=())
    return _build(data, lines, source)


# --- reading: YAML with each key's line number, and 'extends' -------------------------------------------------


def _read(spec: str, seen: tuple[str, ...]) -> tuple[dict, dict, str]:
    import yaml

    if spec in preset_names():
        source = f"preset '{spec}'"
        text = resources.files("cdr.recipes").joinpath("presets", f"{spec}.yaml").read_text(encoding="utf-8")
    elif Path(spec).is_file():
        source = str(spec)
        text = Path(spec).read_text(encoding="utf-8")
    else:
        raise CdrError(f"recipe '{spec}' is neither a preset ({', '.join(preset_names())}) nor a YAML file")
    if spec in seen:
        raise CdrError(f"recipe '{spec}' extends itself (via {' -> '.join(seen)})")
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise CdrError(f"{source}: not valid YAML: {exc}") from None
    if node is None or not isinstance(node, yaml.MappingNode):
        raise CdrError(f"{source}: expected a mapping (name, domains, router, ...) at the top level")
    lines: dict[str, int] = {}
    try:
        data = _plain(node, "", lines)
    except _DuplicateKey as dup:
        raise RecipeError(source, dup.line, dup.key, "appears twice; the second would silently win") from None
    except _BadScalar as bad:
        raise RecipeError(source, bad.line, bad.key, bad.message) from None
    if "name" not in data:
        data["name"] = Path(spec).stem if source != f"preset '{spec}'" else spec
    base = data.pop("extends", None)
    if base is None:
        return data, lines, source
    if not isinstance(base, str):
        raise RecipeError(source, lines.get("extends"), "extends", "expected a preset name or a path")
    if data.get("domains") is not None and not isinstance(data["domains"], dict):
        raise RecipeError(
            source, lines.get("domains"), "domains", "expected a mapping of domain name to its criteria and exemplars"
        )
    base_path = (
        base
        if base in preset_names() or Path(base).is_absolute() or source.startswith("preset")
        else str(Path(source).parent / base)
    )
    parent, parent_lines, _ = _read(base_path, seen + (spec,))
    merged = {**parent, **{k: v for k, v in data.items() if k != "domains"}}
    merged["domains"] = {**(parent.get("domains") or {}), **(data.get("domains") or {})}
    return merged, {**parent_lines, **lines}, source


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int):
        self.key, self.line = key, line


class _BadScalar(Exception):
    def __init__(self, key: str, line: int, message: str):
        self.key, self.line, self.message = key, line, message


def _plain(node, path: str, lines: dict[str, int]) -> Any:
    """YAML node -> Python value, recording the line of every key path ('domains.SAFETY.criteria')."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            sub = f"{path}.{key}" if path else key
            if key in out:
                raise _DuplicateKey(sub, key_node.start_mark.line + 1)
            lines[sub] = key_node.start_mark.line + 1
            out[key] = _plain(value_node, sub, lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = f"{path}[{i}]"
            lines[sub] = item.start_mark.line + 1
            items.append(_plain(item, sub, lines))
        return items
    try:
        return yaml.safe_load(yaml.serialize(node))
    except (yaml.YAMLError, ValueError, TypeError) as exc:  # a tag safe YAML does not allow, or a bad value for one
        reason = getattr(exc, "problem", None) or str(exc)
        raise _BadScalar(
            path or "(top level)", node.start_mark.line + 1, f"cannot read this value ({node.tag}): {reason}"
        ) from None


# --- validation -----------------------------------------------------------------------------------------------


class _Checker:
    def __init__(self, source: str, lines: dict[str, int]):
        self.source, self.lines = source, lines

    def fail(self, key: str, message: str):
        line = self.lines.get(key)
        parent = key
        while line is None and ("." in parent or "[" in parent):
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", parent)
            line = self.lines.get(parent)
        raise RecipeError(self.source, line, key, message)

    def keys(self, data: Any, path: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(data, dict):
            self.fail(path, f"expected a mapping with keys {', '.join(allowed)}")
        for k in data:
            if k not in allowed:
                self.fail(f"{path}.{k}" if path else k, f"unknown key; expected one of {', '.join(allowed)}")
        for k in required:
            if k not in data or data[k] is None:
                self.fail(path, f"missing '{k}'")
        return data

    def text(self, value: Any, key: str, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(key, f"expected non-empty text, got {value!r}")
        return value.strip()

    def texts(self, value: Any, key: str) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str) or not isinstance(value, list):
            self.fail(key, "expected a list of strings")
        return tuple(self.text(v, f"{key}[{i}]") for i, v in enumerate(value))

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            self.fail(key, f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    def integer(self, value: Any, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, f"expected a whole number >= {minimum}, got {value!r}")
        return value


TOP_KEYS = ("name", "description", "placement", "exemplars", "use_criteria", "seed", "fallback", "router", "domains")
DOMAIN_KEYS = ("description", "criteria", "exemplars", "weak")
EXEMPLAR_KEYS = ("prompt", "good", "bad", "explanation")
WEAK_KEYS = ("criteria", "exemplars")
ROUTER_KEYS = ("kind", "rules", "model", "max_chars", "column", "callable")


def _build(data: dict, lines: dict[str, int], source: str) -> Recipe:
    c = _Checker(source, lines)
    c.keys(data, "", TOP_KEYS)
    name = c.text(data.get("name"), "name")
    placement = c.choice(data.get("placement", "both"), "placement", PLACEMENTS)
    n_exemplars = c.integer(data.get("exemplars", 1), "exemplars")
    use_criteria = data.get("use_criteria", True)
    if not isinstance(use_criteria, bool):
        c.fail("use_criteria", f"expected true or false, got {use_criteria!r}")
    seed = c.integer(data.get("seed", 0), "seed")

    domains: dict[str, Domain] = {}
    raw_domains = data.get("domains") or {}
    if not isinstance(raw_domains, dict):
        c.fail("domains", "expected a mapping of domain name to its criteria and exemplars")
    for dname, raw in raw_domains.items():
        path = f"domains.{dname}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", str(dname)):
            c.fail(path, "a domain name is a word (letters, digits, _ or -), starting with a letter")
        c.keys(raw, path, DOMAIN_KEYS)
        exemplars = []
        raw_ex = raw.get("exemplars") or []
        if not isinstance(raw_ex, list):
            c.fail(f"{path}.exemplars", "expected a list of blocks with prompt, good, bad, explanation")
        for i, ex in enumerate(raw_ex):
            epath = f"{path}.exemplars[{i}]"
            c.keys(ex, epath, EXEMPLAR_KEYS, required=EXEMPLAR_KEYS)
            exemplars.append(Exemplar(*(c.text(ex[k], f"{epath}.{k}") for k in EXEMPLAR_KEYS)))
        weak = None
        if raw.get("weak") is not None:
            if placement != "separate":
                c.fail(f"{path}.weak", f"a weak context needs placement: separate (placement is {placement!r})")
            w = c.keys(raw["weak"], f"{path}.weak", WEAK_KEYS)
            weak = Context(
                criteria=c.text(w.get("criteria"), f"{path}.weak.criteria", optional=True),
                exemplars=c.choice(w.get("exemplars", "none"), f"{path}.weak.exemplars", WEAK_EXEMPLARS),
                contrast=False,
            )
        description = c.text(raw.get("description", str(dname)), f"{path}.description")
        criteria = c.text(raw.get("criteria"), f"{path}.criteria", optional=True)
        domains[str(dname)] = Domain(str(dname), description, criteria, tuple(exemplars), weak)

    fallback = data.get("fallback")
    if domains:
        if fallback is None:
            c.fail("fallback", "missing: the domain used when the router has no answer")
        if fallback not in domains:
            c.fail("fallback", f"'{fallback}' is not one of the domains ({', '.join(domains)})")
    router = _router(c, data.get("router"), domains)
    if domains and router.kind == "none" and len(domains) > 1:
        c.fail("router", f"{len(domains)} domains need a router (kind: {', '.join(ROUTER_KINDS[1:])})")
    return Recipe(
        name=name,
        description=(data.get("description") or "").strip(),
        placement=placement,
        exemplars=n_exemplars,
        use_criteria=use_criteria,
        seed=seed,
        fallback=fallback,
        router=router,
        domains=domains,
    )


def _router(c: _Checker, raw: Any, domains: dict[str, Domain]) -> RouterSpec:
    if raw is None:
        return RouterSpec()
    c.keys(raw, "router", ROUTER_KEYS, required=("kind",))
    kind = c.choice(raw["kind"], "router.kind", ROUTER_KINDS)
    spec: dict[str, Any] = {"kind": kind}
    if kind == "rules":
        rules = raw.get("rules")
        if not isinstance(rules, dict) or not rules:
            c.fail("router.rules", "expected a mapping of domain: {keywords: [...], patterns: [...]}")
        parsed = []
        for dname, rule in rules.items():
            path = f"router.rules.{dname}"
            if dname not in domains:
                c.fail(path, f"not one of the domains ({', '.join(domains)})")
            c.keys(rule, path, ("keywords", "patterns"))
            keywords = c.texts(rule.get("keywords"), f"{path}.keywords")
            patterns = c.texts(rule.get("patterns"), f"{path}.patterns")
            for i, p in enumerate(patterns):
                try:
                    re.compile(p)
                except re.error as exc:
                    c.fail(f"{path}.patterns[{i}]", f"not a valid regular expression: {exc}")
            parsed.append((dname, keywords, patterns))
        spec["rules"] = tuple(parsed)
    elif kind == "llm":
        spec["model"] = c.text(raw.get("model", "strong"), "router.model")
        spec["max_chars"] = c.integer(raw.get("max_chars", 2000), "router.max_chars", minimum=1)
    elif kind == "column":
        spec["column"] = c.text(raw.get("column", "domain"), "router.column")
    elif kind == "python":
        target = c.text(raw.get("callable"), "router.callable")
        if not re.fullmatch(r"[\w.]+:[\w.]+", target):
            c.fail("router.callable", f"expected 'package.module:function', got {target!r}")
        spec["callable"] = target
    known = {"rules": ("rules",), "llm": ("model", "max_chars"), "column": ("column",), "python": ("callable",)}
    unused = [k for k in raw if k != "kind" and k not in known.get(kind, ())]
    if unused:
        c.fail(f"router.{unused[0]}", f"not used by a '{kind}' router")
    return RouterSpec(**spec)
