"""The paper's on-policy recipe end to end on the embedded pair, with the time of each stage.

    python benchmarks/onpolicy_e2e.py --prompts 50 -n 4

1. ``cdr sample``: the first turn of 50 MT-Bench questions, 4 samples each from SmolLM2-135M-Instruct;
2. ``cdr annotate``: scored by the default pair (SmolLM2-135M-Instruct over gemma-3-270m), best vs worst,
   into a ``datasets`` directory;
3. a short SimPO run (TRL ``CPOTrainer``, ``loss_type="simpo"``, ``cpo_alpha=0``) on that dataset,
   training SmolLM2-135M-Instruct itself on CPU.
Also reports how often the best and worst sample of a prompt differ by less than a tie margin.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MT_BENCH = HERE.parent.parent / "shared" / "data" / "mt_bench" / "question.jsonl"


def cdr(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "cdr.cli", *args, "-q"], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr)
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=192)
    ap.add_argument("--simpo-steps", type=int, default=12)
    ap.add_argument("--out", default=str(HERE / "results" / "onpolicy"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    times = {}

    t = time.time()
    print(
        cdr(
            "sample",
            str(MT_BENCH),
            "-o",
            str(out / "candidates.jsonl"),
            "--policy",
            "smollm2-135m-instruct",
            "-n",
            str(args.n),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--temperature",
            "0.8",
            "--seed",
            "0",
            "--limit",
            str(args.prompts),
            "--chunk-rows",
            "10",
        )
    )
    times[f"1. sample (SmolLM2, N={args.n})"] = time.time() - t

    t = time.time()
    print(cdr("annotate", str(out / "candidates.jsonl"), "-o", str(out / "pairs"), "--keep-ties"))
    times["2. annotate (default pair)"] = time.time() - t

    rows = [json.loads(line) for line in open(out / "candidates.jsonl")]
    import datasets

    pairs = datasets.load_from_disk(str(out / "pairs"))
    gaps = [max(s for s in p["scores"] if s is not None) - min(s for s in p["scores"] if s is not None) for p in pairs]
    print(f"{len(rows)} prompts, {sum(len(r['responses']) for r in rows)} samples, {len(pairs)} pairs")
    for margin in (0.0, 0.01, 0.05, 0.1):
        share = sum(g <= margin for g in gaps) / len(gaps)
        print(f"best - worst <= {margin}: {share:.1%} of prompts")

    t = time.time()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    from cdr.models import converted_dir, resolve_model

    source = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(converted_dir(source, "tokenizer")))
    model = AutoModelForCausalLM.from_pretrained(str(converted_dir(source, "model")), dtype=torch.float32)
    config = CPOConfig(
        output_dir=str(out / "simpo"),
        loss_type="simpo",
        cpo_alpha=0.0,
        beta=2.0,
        simpo_gamma=0.5,
        max_steps=args.simpo_steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=5e-7,
        max_length=512,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        bf16=False,
        use_cpu=True,
    )
    trainer = CPOTrainer(
        model=model,
        args=config,
        train_dataset=pairs.filter(lambda p: p["score_chosen"] > p["score_rejected"]),
        processing_class=tok,
    )
    result = trainer.train()
    times[f"3. SimPO ({args.simpo_steps} steps x 4 pairs)"] = time.time() - t
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(
        f"SimPO loss: first {logs[0]['loss']:.4f}, last {logs[-1]['loss']:.4f}; "
        f"reward margin first {logs[0].get('rewards/margins', float('nan')):.4f}, "
        f"last {logs[-1].get('rewards/margins', float('nan')):.4f}"
    )
    print("\n| stage | seconds |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\ntrain result: {result.metrics}")


if __name__ == "__main__":
    main()
