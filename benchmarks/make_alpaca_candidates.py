"""Candidate responses for an annotation benchmark: AlpacaEval prompts, GPT-4's reference answer plus
samples from SmolLM2-135M-Instruct (the embedded strong model, via transformers generate).

    python benchmarks/make_alpaca_candidates.py --prompts 50 --samples 3 \
        --out benchmarks/results/alpaca_candidates.jsonl

Each output row: {"id", "dataset", "prompt", "responses": [gpt4, sample_1, ...], "generators": [...]}.
The AlpacaEval outputs file is CC BY-NC 4.0 data with GPT-4 outputs (see shared/data/PROVENANCE.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "alpaca_eval" / "alpaca_eval_gpt4_1106_preview_outputs.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results" / "alpaca_candidates.jsonl"))
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cdr.models import converted_dir, quiet_transformers, resolve_model

    quiet_transformers()
    rows = [json.loads(line) for line in open(args.data)]
    stride = max(1, len(rows) // args.prompts)
    picked = rows[::stride][: args.prompts]
    source = resolve_model("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(str(converted_dir(source, "tokenizer")), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(converted_dir(source, "model")), dtype=torch.float32).eval()
    torch.manual_seed(args.seed)
    out_rows, t0, new_tokens = [], time.time(), 0
    batch = 10
    for start in range(0, len(picked), batch):
        part = picked[start : start + batch]
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": r["instruction"]}], tokenize=False, add_generation_prompt=True
            )
            for r in part
        ]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            gen = model.generate(
                **enc,
                do_sample=True,
                temperature=args.temperature,
                top_p=0.95,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.samples,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        completions = gen[:, enc["input_ids"].shape[1] :]
        for i, r in enumerate(part):
            samples = []
            for j in range(args.samples):
                ids = completions[i * args.samples + j]
                new_tokens += int((ids != (tok.pad_token_id or tok.eos_token_id)).sum())
                samples.append(tok.decode(ids, skip_special_tokens=True).strip() or "(empty)")
            out_rows.append(
                {
                    "id": start + i,
                    "dataset": r["dataset"],
                    "prompt": r["instruction"],
                    "responses": [r["output"], *samples],
                    "generators": [r["generator"]] + ["SmolLM2-135M-Instruct"] * args.samples,
                }
            )
        print(
            f"{len(out_rows)}/{len(picked)} prompts, {new_tokens / (time.time() - t0):.1f} new tokens/s",
            file=sys.stderr,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        for r in out_rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
