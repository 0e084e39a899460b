"""Prompt/response boundary cases (docs/method.md, pitfalls), with the real SmolLM2 and gemma tokenizers."""

import copy

import pytest

from cdr import Conversation
from cdr.rendering import PlainFormat, Renderer
from cdr.span import Tokenization, Unscorable, locate_response

Q = [{"role": "user", "content": "What is the capital of France?"}]
A = "The capital of France is Paris."


def conv(prompt=Q, response=A):
    return Conversation.from_messages(list(prompt) + [{"role": "assistant", "content": response}])


def scored_text(tokenizer, rendered, include_eot=True, max_length=None, tok=None):
    span = locate_response(tok or Tokenization(tokenizer), rendered, include_eot, max_length)
    return span, tokenizer.decode(span.token_ids[span.start :])


def test_chatml_with_injected_default_system_prompt(smol_tokenizer):
    rendered = Renderer(smol_tokenizer).render(conv())
    assert "You are a helpful AI assistant named SmolLM" in rendered.prompt  # injected by the template
    span, text = scored_text(smol_tokenizer, rendered)
    assert span.method == "prefix"
    assert text == A + "<|im_end|>\n"


def test_explicit_system_prompt_replaces_default(smol_tokenizer):
    rendered = Renderer(smol_tokenizer).render(conv([{"role": "system", "content": "Answer briefly."}] + Q))
    assert "SmolLM" not in rendered.full and "Answer briefly." in rendered.prompt
    _, text = scored_text(smol_tokenizer, rendered)
    assert text == A + "<|im_end|>\n"


def test_multi_turn_scores_only_last_assistant_turn(smol_tokenizer):
    turns = Q + [{"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}]
    span, text = scored_text(smol_tokenizer, Renderer(smol_tokenizer).render(conv(turns, "Rome.")))
    assert text == "Rome.<|im_end|>\n"
    assert "Paris." in smol_tokenizer.decode(span.token_ids[: span.start])


def test_exclude_end_of_turn(smol_tokenizer, gemma_tokenizer):
    _, text = scored_text(smol_tokenizer, Renderer(smol_tokenizer).render(conv()), include_eot=False)
    assert text == A
    _, text = scored_text(gemma_tokenizer, Renderer(gemma_tokenizer).render(conv()), include_eot=False)
    assert text.strip() == A


def test_template_less_model_gets_plain_format_and_one_bos(gemma_tokenizer):
    renderer = Renderer(gemma_tokenizer)
    assert renderer.template is None
    rendered = renderer.render(conv())
    assert rendered.prompt == "User: What is the capital of France?\n\nAssistant:"
    span, text = scored_text(gemma_tokenizer, rendered)
    assert text == " " + A + "<eos>"  # the separator space rides with the first response token
    assert span.token_ids[0] == gemma_tokenizer.bos_token_id
    assert span.token_ids.count(gemma_tokenizer.bos_token_id) == 1


def test_separator_space_alone_is_not_scored(gemma_tokenizer):
    # gemma splits " 2" into " " + "2": the lone space is the template's separator, not the response
    rendered = Renderer(gemma_tokenizer).render(conv(response="2"))
    span, text = scored_text(gemma_tokenizer, rendered)
    assert text == "2<eos>"
    assert gemma_tokenizer.decode(span.token_ids[span.start - 1 : span.start]) == " "


def test_doubled_bos_is_removed(gemma_templated_tokenizer):
    tok = gemma_templated_tokenizer
    rendered = Renderer(tok).render(conv())
    assert rendered.full.startswith(tok.bos_token)  # the template writes BOS, and the tokenizer adds one too
    naive = tok(rendered.full)["input_ids"]
    assert naive[:2] == [tok.bos_token_id, tok.bos_token_id]  # the trap
    span, text = scored_text(tok, rendered)
    assert span.token_ids[:2] != (tok.bos_token_id, tok.bos_token_id)
    assert span.token_ids[0] == tok.bos_token_id
    assert text == A + "<end_of_turn>\n"


def test_shared_rendering_gives_strong_text_to_weak_tokenizer(smol_tokenizer, gemma_tokenizer):
    rendered = Renderer(smol_tokenizer).render(conv())
    span, text = scored_text(gemma_tokenizer, rendered)
    assert text == A + "<|im_end|>\n"
    assert span.token_ids[0] == gemma_tokenizer.bos_token_id


def test_trailing_space_seam_falls_back_to_offsets(smol_tokenizer):
    # "Assistant: " + "Paris": the prompt's trailing space merges into " Paris", so the prompt's ids are not
    # a prefix; the straddling token's prompt-side part is whitespace, so the offsets fallback accepts it.
    renderer = Renderer(smol_tokenizer, use_template=False)
    rendered = renderer.render(conv())
    rendered = type(rendered)(rendered.prompt + " ", rendered.full, rendered.content_start, rendered.content_end)
    span, text = scored_text(smol_tokenizer, rendered)
    assert span.method == "offsets"
    assert text.startswith(" The capital")


def test_bpe_merge_across_the_seam_is_unscorable(smol_tokenizer):
    # The prompt ends in "A" and the response starts "nswer": BPE merges them into one token "Answer",
    # which belongs to both sides. The row must be reported, not scored from a guessed boundary.
    fmt = PlainFormat(assistant="A{content}\n\n")
    rendered = Renderer(smol_tokenizer, fmt, use_template=False).render(conv(response="nswer: Paris."))
    tok = Tokenization(smol_tokenizer)
    full_ids, _ = tok.encode(rendered.full)
    assert smol_tokenizer.convert_tokens_to_ids("Answer") in full_ids
    with pytest.raises(Unscorable, match="seam"):
        locate_response(tok, rendered)


def test_template_that_rewrites_earlier_turns_is_unscorable(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = (
        "{{ messages|length }} turns\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    with pytest.raises(Unscorable, match="not a prefix"):
        locate_response(Tokenization(tok), Renderer(tok).render(conv()))


def test_truncation_from_the_right_is_flagged(smol_tokenizer):
    rendered = Renderer(smol_tokenizer).render(conv(response="word " * 200))
    full = locate_response(Tokenization(smol_tokenizer), rendered)
    span = locate_response(Tokenization(smol_tokenizer), rendered, max_length=full.start + 10)
    assert span.truncated and span.n_tokens == 10
    assert span.token_ids == full.token_ids[: full.start + 10]
    assert not full.truncated
    with pytest.raises(Unscorable, match="fills the model's context"):
        locate_response(Tokenization(smol_tokenizer), rendered, max_length=full.start)


def test_template_that_trims_content_still_finds_response_end(smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = tok.chat_template.replace("message['content']", "message['content'] | trim")
    rendered = Renderer(tok).render(conv(response="  Paris.  "))
    _, text = scored_text(tok, rendered, include_eot=False)
    assert text == "Paris."
