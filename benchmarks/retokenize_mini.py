"""Re-score the mini set's responses whose tokens changed with the tokenizer repair (docs/tokenization.md).

    python benchmarks/retokenize_mini.py            # -> benchmarks/results/mini_logprobs.jsonl (new tokens)
    python benchmarks/choose_defaults.py            # the section 1 table from it

``benchmarks/results/mini_logprobs.tokenizer-v1.jsonl`` holds every response's log-prob under the old
tokenization (``dump_mini_logprobs.py`` before the repair). A model's log-prob of a response depends only on
its token ids, so each (response, model, rendering) whose ids are the same under the old and the new
tokenizer keeps its stored value (the log-prob cache relies on the same fact), and every one whose ids changed
is scored again. A control sample of unchanged ones is scored again too, and the largest difference from the
stored value is printed, so the reuse is checked, not assumed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "reward_bench" / "mini.jsonl"


def old_tokenization(source):
    """transformers' own conversion of the GGUF tokenizer, as cdr used it before the repair."""
    from transformers import AutoTokenizer

    from cdr.span import Tokenization

    raw = AutoTokenizer.from_pretrained(str(source.gguf_path.parent), gguf_file=source.gguf_path.name)
    return Tokenization(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--old", default=str(HERE / "results" / "mini_logprobs.tokenizer-v1.jsonl"))
    ap.add_argument("--out", default=str(HERE / "results" / "mini_logprobs.jsonl"))
    ap.add_argument("--control-every", type=int, default=23, help="score again every Nth unchanged response")
    args = ap.parse_args()

    from cdr import Conversation, DensityRatio
    from cdr.models import quiet_transformers
    from cdr.span import locate_response

    quiet_transformers()
    rows = [json.loads(line) for line in open(args.data)]
    old = [json.loads(line) for line in open(args.old)]
    convs = [
        Conversation.from_prompt_response(row["prompt"], row[side]) for row in rows for side in ("chosen", "rejected")
    ]
    assert len(old) == len(convs) and all(
        (o["subset"], o["id"], o["side"]) == (r["subset"], str(r["id"]), s)
        for o, (r, s) in zip(old, [(r, s) for r in rows for s in ("chosen", "rejected")])
    ), "the old log-prob file does not list the same responses in the same order"

    t0 = time.time()
    reward = DensityRatio(rendering="own", cache="none")
    load_s = time.time() - t0
    sides = {
        "strong": (reward.strong, reward.strong.renderer, old_tokenization(reward.strong.source)),
        "weak_own": (reward.weak, reward.weak.renderer, None),
        "weak_shared": (reward.weak, reward.strong.renderer, None),
    }
    weak_old = old_tokenization(reward.weak.source)
    sides["weak_own"] = sides["weak_own"][:2] + (weak_old,)
    sides["weak_shared"] = sides["weak_shared"][:2] + (weak_old,)

    new = [dict(o) for o in old]
    report = {"responses": len(convs), "load_s": round(load_s, 1)}
    for label, (scorer, renderer, before) in sides.items():
        changed, control = [], []
        unchanged = 0
        for i, conv in enumerate(convs):
            rendered = renderer.render(conv)
            a = locate_response(before, rendered)
            b = locate_response(scorer.tokenization, rendered)
            if (a.token_ids, a.start) != (b.token_ids, b.start):
                changed.append(i)
            else:
                unchanged += 1
                if unchanged % args.control_every == 0:
                    control.append(i)
        t0 = time.time()
        todo = changed + control
        scored = scorer.logprobs([convs[i] for i in todo], renderer, include_eot=True) if todo else []
        seconds = time.time() - t0
        control_diff = 0.0
        shifts = []
        for i, x in zip(todo, scored):
            value = {"sum": x.total, "n": x.n_tokens, "truncated": x.truncated}
            if i in control:
                control_diff = max(control_diff, abs(value["sum"] - old[i][label]["sum"]))
                assert value["n"] == old[i][label]["n"]
            else:
                shifts.append((value["sum"] - old[i][label]["sum"], value["n"] - old[i][label]["n"]))
                new[i][label] = value
        report[label] = {
            "changed": len(changed),
            "rescored_s": round(seconds, 1),
            "control_rescored": len(control),
            "control_max_abs_diff_nats": control_diff,
            "changed_logprob_shift_nats": {
                "min": min((s for s, _ in shifts), default=None),
                "mean": sum(s for s, _ in shifts) / len(shifts) if shifts else None,
                "max": max((s for s, _ in shifts), default=None),
            },
            "changed_token_count_shift": {
                "min": min((n for _, n in shifts), default=None),
                "max": max((n for _, n in shifts), default=None),
            },
        }
        print(label, json.dumps(report[label]), file=sys.stderr)
    with open(args.out, "w") as f:
        for rec in new:
            f.write(json.dumps(rec) + "\n")
    report["provenance"] = reward.provenance
    print(json.dumps(report))


if __name__ == "__main__":
    main()
