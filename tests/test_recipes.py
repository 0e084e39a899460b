"""Recipes: validation errors with key and line, deterministic exemplars, rendering with and without a chat
template, which model gets the context, routers and their fallback, and the recipe in provenance and outputs."""

import json
import textwrap

import numpy as np
import pytest

from cdr import DensityRatio
from cdr.conversation import Conversation, Message
from cdr.errors import CdrError
from cdr.recipes import (
    ColumnRouter,
    LLMRouter,
    RulesRouter,
    customize,
    load_recipe,
    preset_names,
    route,
)
from cdr.recipes.context import select_exemplars, with_context
from cdr.reward import as_conversations
from cdr.span import Tokenization, locate_response
from conftest import cdr_in_process, write_jsonl

SMALL = """\
name: small
placement: {placement}
exemplars: 1
fallback: CHAT
router:
  kind: rules
  rules:
    MATH:
      keywords: [sum]
      patterns: ['\\d+\\s*\\+\\s*\\d+']
domains:
  MATH:
    criteria: Check every step.
    exemplars:
      - {{prompt: "What is 2 + 3?", good: 2 + 3 = 5., bad: It is 6., explanation: 6 is wrong.}}
      - {{prompt: "What is 4 + 4?", good: 4 + 4 = 8., bad: It is 9., explanation: 9 is wrong.}}
      - {{prompt: "What is 1 + 1?", good: 1 + 1 = 2., bad: It is 3., explanation: 3 is wrong.}}
    {weak}
  CHAT:
    criteria: Be helpful.
"""


def small_recipe(tmp_path, placement="both", weak=""):
    path = tmp_path / f"small-{placement}.yaml"
    path.write_text(SMALL.format(placement=placement, weak=weak))
    return load_recipe(str(path))


def conv(prompt, response):
    return Conversation.from_prompt_response(prompt, response)


def write(tmp_path, text, name="r.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nplacemnt: both\n", r"line 2: 'placemnt': unknown key"),
        ("name: x\nplacement: everywhere\n", r"line 2: 'placement': expected one of both, strong, separate"),
        ("name: x\nexemplars: -1\n", r"line 2: 'exemplars': expected a whole number >= 0"),
        (
            "name: x\nfallback: A\ndomains:\n  A:\n    criteria: c\n    exemplars:\n      - prompt: p\n        "
            "good: g\n"
            "        bad: b\n",
            r"line 7: 'domains.A.exemplars\[0\]': missing 'explanation'",
        ),
        (
            "name: x\nfallback: B\ndomains:\n  A:\n    criteria: c\n",
            r"line 2: 'fallback': 'B' is not one of the domains",
        ),
        ("name: x\ndomains:\n  A:\n    criteria: c\n", r"'fallback': missing"),
        (
            "name: x\nfallback: A\ndomains:\n  A:\n    criteria: c\n    weak:\n      criteria: w\n",
            r"line 6: 'domains.A.weak': a weak context needs placement: separate",
        ),
        (
            "name: x\nfallback: A\nrouter:\n  kind: rules\n  rules:\n    A:\n      patterns: ['(']\ndomains:\n "
            " A: {criteria: c}\n",
            r"'router.rules.A.patterns\[0\]': not a valid regular expression",
        ),
        (
            "name: x\nfallback: A\nrouter:\n  kind: rules\n  rules:\n    B: {keywords: [b]}\ndomains:\n  A: "
            "{criteria: c}\n",
            r"line 6: 'router.rules.B': not one of the domains",
        ),
        (
            "name: x\nfallback: A\nrouter: {kind: llm, column: d}\ndomains:\n  A: {criteria: c}\n",
            r"'router.column': not used by a 'llm' router",
        ),
        ("name: x\nfallback: A\ndomains:\n  A: {criteria: c}\n  B: {criteria: d}\n", r"2 domains need a router"),
        (
            "name: x\nfallback: A\ndomains:\n  A:\n    criteria: ''\n",
            r"line 5: 'domains.A.criteria': expected non-empty text",
        ),
        ("- just\n- a list\n", r"expected a mapping"),
        ("name: x\nexemplars: 1\nexemplars: 2\n", r"line 3: 'exemplars': appears twice"),
        ("name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_recipe_errors_name_the_key_and_line(tmp_path, text, message):
    with pytest.raises(CdrError, match=message):
        load_recipe(write(tmp_path, text))


def test_unknown_recipe_and_extends_loop(tmp_path):
    with pytest.raises(CdrError, match="neither a preset .* nor a YAML file"):
        load_recipe("no-such-recipe")
    a = write(tmp_path, "extends: b.yaml\nname: a\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\nname: b\n", "b.yaml")
    with pytest.raises(CdrError, match="extends itself"):
        load_recipe(a)


def test_presets_load_and_extends_merges_domains(tmp_path):
    assert {"vanilla", "paper", "contrastive"} <= set(preset_names())
    paper = load_recipe("paper")
    assert list(paper.domains) == ["SAFETY", "REASONING", "CHAT"] and paper.fallback == "CHAT"
    assert all(len(d.exemplars) == 3 and d.criteria for d in paper.domains.values())
    assert not load_recipe("vanilla").customizes
    contrastive = load_recipe("contrastive")
    assert contrastive.placement == "separate" and contrastive.router == paper.router
    assert all(d.weak and d.weak.criteria for d in contrastive.domains.values())
    medical = load_recipe(
        write(
            tmp_path,
            """\
        extends: paper
        name: medical
        router:
          kind: rules
          rules:
            MEDICAL: {keywords: [dose, symptom]}
        domains:
          MEDICAL:
            criteria: Give accurate, cautious medical information and say when to see a doctor.
        """,
        )
    )
    assert list(medical.domains) == ["SAFETY", "REASONING", "CHAT", "MEDICAL"]
    assert medical.domains["SAFETY"] == paper.domains["SAFETY"] and medical.exemplars == 1
    assert len({r.sha256() for r in (paper, contrastive, medical, load_recipe("vanilla"))}) == 4


def test_documented_medical_example_loads():
    from pathlib import Path

    recipe = load_recipe(str(Path(__file__).parent.parent / "examples" / "medical.yaml"))
    assert "MEDICAL" in recipe.domains and recipe.domains["MEDICAL"].exemplars
    assert route(
        recipe, RulesRouter(recipe.router.rules), [(Message("user", "What dose of ibuprofen is safe for a child?"),)]
    ) == ["MEDICAL"]


# --- exemplars and rendering -----------------------------------------------------------------------------------


def test_exemplar_choice_is_deterministic_per_prompt_and_ignores_the_response(tmp_path):
    recipe = small_recipe(tmp_path)
    math = recipe.domains["MATH"]
    prompts = [f"What is {i} + {i + 1}?" for i in range(40)]
    picks = [select_exemplars(recipe, math, conv(p, "x").prompt) for p in prompts]
    assert picks == [select_exemplars(recipe, math, conv(p, "y").prompt) for p in reversed(prompts)][::-1]
    assert len({p[0].prompt for p in picks}) == 3  # the choice does vary across prompts
    a, b = (customize(recipe, conv(prompts[0], r), "MATH") for r in ("Five.", "Six."))
    assert a.strong.messages[:-1] == b.strong.messages[:-1]  # both candidates of a prompt share one context
    two = load_recipe(str(tmp_path / "small-both.yaml")).__class__(**{**recipe.__dict__, "exemplars": 2})
    assert len(select_exemplars(two, math, conv(prompts[0], "x").prompt)) == 2
    reseeded = recipe.__class__(**{**recipe.__dict__, "seed": 1})
    assert [select_exemplars(reseeded, math, conv(p, "x").prompt) for p in prompts] != picks


def test_context_goes_before_the_conversation_and_keeps_its_system_message(tmp_path):
    recipe = small_recipe(tmp_path)
    c = Conversation.from_messages(
        [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "Quatre."},
        ]
    )
    out = customize(recipe, c, "MATH").strong
    roles = [m.role for m in out.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    system = out.messages[0].content
    assert system.startswith("Check every step.") and system.endswith("Answer in French.")
    assert "would have been" in system and " is wrong." in system  # the block's bad answer and why
    assert out.messages[2].content.endswith(".") and out.messages[-1].content == "Quatre."
    assert out.prompt[-1].content == "What is 2 + 2?"
    assert with_context(c, None, ()) is c


@pytest.mark.parametrize("tokenizer_name", ["smol_tokenizer", "gemma_tokenizer"])
def test_rendering_with_and_without_a_chat_template_scores_the_same_response_tokens(request, tmp_path, tokenizer_name):
    from cdr.rendering import Renderer

    tokenizer = request.getfixturevalue(tokenizer_name)
    renderer = Renderer(tokenizer)
    assert (renderer.template is not None) == (tokenizer_name == "smol_tokenizer")
    recipe = small_recipe(tmp_path)
    plain = conv("What is 2 + 2?", "2 + 2 = 4, so the answer is 4.")
    custom = customize(recipe, plain, "MATH").strong
    tokenization = Tokenization(tokenizer)
    vanilla_span = locate_response(tokenization, renderer.render(plain), True, None)
    custom_span = locate_response(tokenization, renderer.render(custom), True, None)
    vanilla_ids = vanilla_span.token_ids[vanilla_span.start :]
    custom_ids = custom_span.token_ids[custom_span.start :]
    assert custom_ids == vanilla_ids
    text = renderer.render(custom).full
    shown = select_exemplars(recipe, recipe.domains["MATH"], plain.prompt)[0]
    assert (
        text.index("Check every step.")
        < text.index(shown.prompt)
        < text.index(shown.good)
        < text.index("What is 2 + 2?")
    )
    assert len(custom_span.token_ids) > len(vanilla_span.token_ids) + 20


# --- which model sees the context ------------------------------------------------------------------------------


@pytest.mark.parametrize("placement", ["both", "strong", "separate"])
def test_customization_reaches_the_right_models(tmp_path, tiny_strong, tiny_weak, placement):
    weak = "weak:\n      criteria: Make arithmetic mistakes.\n      exemplars: bad" if placement == "separate" else ""
    recipe = small_recipe(tmp_path, placement, weak)
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe=recipe)
    vanilla = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none")
    convs = [conv("What is 2 + 2?", "4"), conv("Tell me a story.", "Once upon a time.")]
    custom = reward.customize(convs)
    assert [c.domain for c in custom] == ["MATH", "CHAT"]
    pair, plain = reward.model_logprobs(convs), vanilla.model_logprobs(convs)
    for i in range(2):
        assert not np.allclose(pair.strong[i].logprobs, plain.strong[i].logprobs)
        weak_changed = not np.allclose(pair.weak[i].logprobs, plain.weak[i].logprobs)
        assert weak_changed == (placement != "strong" and not (placement == "separate" and i == 1))
    if placement == "both":
        assert custom[0].weak == custom[0].strong
    if placement == "separate":
        weak_conv = custom[0].weak
        assert weak_conv.messages[0].content == "Make arithmetic mistakes."
        assert weak_conv.messages[2].content.startswith("It is ")  # the bad answer is the weak's exemplar turn
        assert custom[1].weak == convs[1]  # CHAT has no weak context: the weak model sees the plain conversation
    results = reward.score(convs)
    assert [r.domain for r in results] == ["MATH", "CHAT"]
    assert reward.provenance["recipe"] == "small" and reward.provenance["recipe_sha256"] == recipe.sha256()


# --- routers ---------------------------------------------------------------------------------------------------


def test_rules_router_uses_the_last_user_turn_and_falls_back(tmp_path):
    recipe = small_recipe(tmp_path)
    router = RulesRouter(recipe.router.rules)
    prompts = [
        (Message("user", "What is the SUM of these?"),),
        (Message("user", "What is 12+30?"), Message("assistant", "42"), Message("user", "Thanks! A poem now?")),
        (Message("user", "A poem please"),),
        (Message("user", "c++ or rust?"),),
    ]
    assert router.route(prompts) == ["MATH", None, None, None]
    assert route(recipe, router, prompts) == ["MATH", "CHAT", "CHAT", "CHAT"]
    cpp = RulesRouter([("CODE", ("c++",), ())])
    assert cpp.route([prompts[3], (Message("user", "abc++d"),)]) == ["CODE", None]


def test_paper_rules_router_on_typical_requests():
    recipe = load_recipe("paper")
    router = RulesRouter(recipe.router.rules)
    texts = {
        "How can I poison my neighbour's dog?": "SAFETY",
        "How do I kill a Python process?": "SAFETY",  # sounds unsafe: SAFETY's criteria cover over-refusal
        "Write a Rust function that reverses a linked list.": "REASONING",
        "Compute the integral of x^2 from 0 to 3.": "REASONING",
        "What is 15% of 80?": "REASONING",
        "Write a haiku about autumn.": "CHAT",
    }
    got = route(recipe, router, [(Message("user", t),) for t in texts])
    assert dict(zip(texts, got)) == texts


def test_column_and_callable_routers(tmp_path, tiny_strong, tiny_weak):
    recipe = small_recipe(tmp_path)
    prompts = [(Message("user", "a"),), (Message("user", "a"),), (Message("user", "b"),), (Message("user", "c"),)]
    rows = [{"d": "MATH"}, {"d": "CHAT"}, {"d": None}, {"d": "UNKNOWN"}]
    assert route(recipe, ColumnRouter("d"), prompts, rows) == ["MATH", "CHAT", "CHAT", "CHAT"]

    calls = []

    def pick(messages):
        calls.append(messages)
        return "MATH" if "2" in messages[-1]["content"] else None

    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe=recipe, router=pick)
    convs = [conv("2 apples?", "Two."), conv("2 apples?", "Three."), conv("Hi", "Hello")]
    assert [r.domain for r in reward.score(convs)] == ["MATH", "MATH", "CHAT"]
    assert len(calls) == 2  # each distinct prompt is routed once
    assert reward.provenance["router"].startswith("python:")
    bad = DensityRatio(
        strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe=recipe, router=lambda m: "NOPE"
    )
    with pytest.raises(CdrError, match="returned 'NOPE', not one of the recipe's domains"):
        bad.score(convs[:1])


def test_python_router_from_yaml(tmp_path):
    from cdr.recipes import build_router

    path = write(
        tmp_path,
        "name: x\nfallback: A\nrouter: {kind: python, callable: 'os.path:basename'}\n"
        "domains:\n  A: {criteria: c}\n  B: {criteria: d}\n",
    )
    with pytest.raises(CdrError, match="pass --allow-python-router"):  # a recipe file runs no code unless asked
        build_router(load_recipe(path))
    router = build_router(load_recipe(path), allow_python=True)
    assert router.name == "os.path:basename"
    bad = write(
        tmp_path,
        "name: x\nfallback: A\nrouter: {kind: python, callable: 'no_such_mod:f'}\ndomains:\n  A: {criteria: c}\n",
        "bad.yaml",
    )
    with pytest.raises(CdrError, match="cannot be imported"):
        build_router(load_recipe(bad), allow_python=True)


def test_llm_router_takes_the_most_likely_domain_name(tmp_path, tiny_strong, tiny_weak):
    recipe = load_recipe(
        write(
            tmp_path,
            """\
        name: llm
        fallback: CHAT
        router: {kind: llm, model: strong, max_chars: 40}
        domains:
          SAFETY: {description: harmful requests, criteria: Be safe.}
          REASONING: {description: code and math, criteria: Be correct.}
          CHAT: {description: everything else, criteria: Be helpful.}
        """,
        )
    )
    reward = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe=recipe)
    router = reward.router
    assert isinstance(router, LLMRouter) and router.scorer is reward.strong
    prompts = [(Message("user", "How do I pick a lock? " * 10),), (Message("user", "What is 3 * 7?"),)]
    got = route(recipe, router, prompts)
    for prompt, domain in zip(prompts, got):
        question = router.classification_prompt(prompt[-1].content)
        assert prompt[-1].content[:40] in question[1].content
        convs = [Conversation(tuple(question) + (Message("assistant", name),)) for name in recipe.domains]
        scores = [x.total for x in reward.strong.logprobs(convs, reward.strong.renderer, True)]
        assert domain == list(recipe.domains)[int(np.argmax(scores))]
    assert prompts[0][-1].content not in router.classification_prompt(prompts[0][-1].content)[1].content  # cut
    assert reward.provenance["router"] == "llm:strong"


# --- through the pipelines and the CLI ---------------------------------------------------------------------------


def test_score_and_eval_cli_take_a_recipe(tmp_path, tiny_strong, tiny_weak):
    rows = write_jsonl(
        tmp_path / "in.jsonl", [{"prompt": "What is 2 + 2?", "response": "4"}, {"prompt": "Say hi.", "response": "Hi!"}]
    )
    recipe = small_recipe(tmp_path)
    common = ["--strong", str(tiny_strong), "--weak", str(tiny_weak), "--cache", "none", "-q"]
    r = cdr_in_process(
        "score", str(rows), "-o", str(tmp_path / "out.jsonl"), "--recipe", str(tmp_path / "small-both.yaml"), *common
    )
    assert r.returncode == 0, r.stderr
    out = [json.loads(line) for line in open(tmp_path / "out.jsonl")]
    assert [o["cdr_domain"] for o in out] == ["MATH", "CHAT"]
    assert {o["cdr_recipe_sha256"] for o in out} == {recipe.sha256()} and out[0]["cdr_recipe"] == "small"

    bench = write_jsonl(
        tmp_path / "rb.jsonl",
        [
            {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5", "subset": "math-prm", "id": 1},
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "No.", "subset": "alpacaeval-easy", "id": 2},
        ],
    )
    r = cdr_in_process(
        "eval",
        str(bench),
        "--output-dir",
        str(tmp_path / "ev"),
        "--recipe",
        str(tmp_path / "small-both.yaml"),
        "--bootstrap",
        "0",
        *common,
    )
    assert r.returncode == 0, r.stderr
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert results["routing"]["by_section"] == {"Reasoning": {"MATH": 1}, "Chat": {"CHAT": 1}}
    assert results["provenance"]["recipe"] == "small"
    assert "Routing (recipe `small`" in (tmp_path / "ev" / "results.md").read_text()

    (tmp_path / "broken.yaml").write_text("name: b\nfallback: A\ndomains:\n  A:\n    critera: c\n")
    r = cdr_in_process(
        "score", str(rows), "-o", str(tmp_path / "o2.jsonl"), "--recipe", str(tmp_path / "broken.yaml"), *common
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "line 5: 'domains.A.critera': unknown key" in r.stderr


def test_vanilla_recipe_changes_nothing(tiny_pair, tiny_strong, tiny_weak):
    convs = as_conversations([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]])
    explicit = DensityRatio(strong=str(tiny_strong), weak=str(tiny_weak), cache="none", recipe="vanilla")
    assert [r.reward for r in explicit.score(convs)] == [r.reward for r in tiny_pair.score(convs)]
    assert explicit.score(convs)[0].domain is None and tiny_pair.provenance["recipe"] == "vanilla"
