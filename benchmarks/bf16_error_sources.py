"""Where does bfloat16's error come from? (#26) The hf backend in three bf16 variants against float32, per model.

    python benchmarks/bf16_error_sources.py --rows 20        # both models, both responses of 20 mini-set rows

`cdr score --dtype bfloat16` changed 4 of 230 mini-set pair decisions (docs/benchmarks.md section 15): the reward
is a per-token mean, so what decides is each response's *mean* error, not the per-token one. This measures both
for three ways of running a model in bfloat16, on the same token-id requests (one row's two responses per call,
as `cdr score` batches them; prompt sharing on):
    bf16              --dtype bfloat16 as shipped: bf16 weights and activations; the target's logit in float32,
                      the logsumexp normaliser over bf16 logit tiles cast to float32
    bf16, f32 head    the same body, the LM head's logit tiles computed in float32 (a float32 copy of the head
                      weight): removes the rounding of the logits to bf16
    autocast          float32 weights under torch.autocast(cpu, bfloat16): matmul inputs rounded to bf16, the
                      residual stream, norms and softmax kept in float32 (mixed precision as in training)
Printed per variant: mean and max per-token |error| (nats), the mean over responses of |sum error| / tokens (the
error of the per-token mean the reward uses), and the time against float32's on the same calls.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from precision import MODELS, conversations, machine, mini_rows, scorer  # noqa: E402


def score_all(backend, requests, autocast: bool = False) -> tuple[list[np.ndarray], float]:
    import torch

    out, start = [], time.perf_counter()
    for s in range(0, len(requests), 2):
        context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with context:
            out += backend.response_logprobs(requests[s : s + 2])
    return out, time.perf_counter() - start


def float32_head(backend) -> None:
    """Compute the backend's logit tiles in float32 from here on (a float32 copy of the head weight)."""
    import torch.nn.functional as F

    weight = backend.head.weight.float()
    bias = None if backend.head.bias is None else backend.head.bias.float()

    def tile(hidden, start, stop):
        return backend._postprocess(
            F.linear(hidden.float(), weight[start:stop], None if bias is None else bias[start:stop])
        )

    backend._logit_tile = tile


def main() -> None:
    from cdr.backends import LogprobRequest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20, help="mini-set rows spread over the set (2 responses each)")
    ap.add_argument("--out", default=str(HERE / "results" / "bf16_error_sources.json"))
    args = ap.parse_args()
    rows = mini_rows()
    picked = rows[:: max(1, len(rows) // args.rows)][: args.rows]
    convs, _ = conversations(picked)
    result = {"machine": machine(), "rows": len(picked), "models": {}}
    for role, model in MODELS.items():
        exact = scorer(model, "float32", role)
        spans = [exact.span(c, exact.renderer, True) for c in convs]
        requests = [LogprobRequest(s.token_ids, s.start) for s in spans]
        reference, f32_s = score_all(exact.backend, requests)
        half = scorer(model, "bfloat16", role)
        runs = {"bf16": score_all(half.backend, requests)}
        runs["autocast"] = score_all(exact.backend, requests, autocast=True)
        float32_head(half.backend)
        runs["bf16, f32 head"] = score_all(half.backend, requests)
        rows_out = {}
        for name, (got, seconds) in runs.items():
            diff = np.concatenate([g - r for g, r in zip(got, reference)])
            mean_err = [abs(g.sum() - r.sum()) / len(r) for g, r in zip(got, reference)]
            rows_out[name] = {
                "per_token_mean_abs": float(np.abs(diff).mean()),
                "per_token_max_abs": float(np.abs(diff).max()),
                "response_mean_err": float(np.mean(mean_err)),
                "response_mean_err_max": float(np.max(mean_err)),
                "seconds": round(seconds, 2),
                "speed_vs_float32": round(f32_s / seconds, 2),
            }
        result["models"][model] = {"float32_s": round(f32_s, 2), "tokens": int(sum(len(r) for r in reference))}
        result["models"][model]["variants"] = rows_out
        print(f"\n{model}: {len(requests)} responses, {result['models'][model]['tokens']} response tokens")
        print("| variant | per-token mean abs err | max | per-response mean err (mean, max) | speed vs float32 |")
        print("|---|---|---|---|---|")
        for name, r in rows_out.items():
            print(
                f"| {name} | {r['per_token_mean_abs']:.4f} | {r['per_token_max_abs']:.3f} | "
                f"{r['response_mean_err']:.4f}, {r['response_mean_err_max']:.4f} | {r['speed_vs_float32']:.2f}x |"
            )
        del exact, half
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
