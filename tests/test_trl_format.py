"""``cdr annotate`` output goes into TRL's preference trainers unchanged (a couple of real training steps).

Tiny random policy (built in conftest), so this checks the data format and the wiring, not learning.
"""

import pytest

from conftest import run_cdr, write_jsonl

trl = pytest.importorskip("trl", reason="install the [trl] extra (the test command does)")


@pytest.fixture(scope="module")
def annotated(tmp_path_factory, tiny_strong, tiny_weak):
    tmp = tmp_path_factory.mktemp("trl")
    rows = [
        {"prompt": f"Name a colour, number {i}.", "responses": ["Blue.", "Red, like a rose.", f"Green {i}."]}
        for i in range(8)
    ]
    src = write_jsonl(tmp / "cands.jsonl", rows)
    proc = run_cdr(
        "annotate",
        str(src),
        "-o",
        str(tmp / "pairs"),
        "--strong",
        str(tiny_strong),
        "--weak",
        str(tiny_weak),
        "--cache",
        "none",
        "--keep-ties",
    )
    assert proc.returncode == 0, proc.stderr
    import datasets

    return datasets.load_from_disk(str(tmp / "pairs")), tmp


def _policy(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return AutoModelForCausalLM.from_pretrained(path), tok


def _changed(model, before):
    return any((p.detach() - before[n]).abs().max() > 0 for n, p in model.named_parameters() if n in before)


def test_simpo_with_cpo_trainer(annotated, tiny_strong):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    dataset, tmp = annotated
    model, tok = _policy(str(tiny_strong))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = CPOConfig(
        output_dir=str(tmp / "simpo"),
        loss_type="simpo",
        cpo_alpha=0.0,
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        max_length=128,
    )
    trainer = CPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss == result.training_loss  # not NaN
    assert _changed(model, before)


def test_dpo_trainer(annotated, tiny_strong):
    from trl import DPOConfig, DPOTrainer

    dataset, tmp = annotated
    model, tok = _policy(str(tiny_strong))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = DPOConfig(
        output_dir=str(tmp / "dpo"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        report_to=[],
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        logging_steps=1,
        max_length=128,
    )
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss == result.training_loss
    assert _changed(model, before)
