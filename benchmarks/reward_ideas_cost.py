"""What each reward idea of #22 costs, next to the vanilla pair, side by side in one run.

    python benchmarks/reward_ideas_cost.py                     # 60 mini responses, exit layers 8, 15, 22
    python benchmarks/reward_ideas_cost.py --responses 120 --exit-layers 15 --rounds 3

Each configuration scores the same first --responses responses of the mini set through the Python API
(`DensityRatio.score`, cache off) in a process of its own, so its peak memory is its own; the configurations
take turns for --rounds rounds and the fastest round of each is kept (a shared machine is noisy; the order of
turns rotates so no configuration always runs first). Loading is timed apart.

Configurations:
- vanilla: the default pair (SmolLM2-135M-Instruct over gemma-3-270m).
- early-exit L: SmolLM2 over itself read after its first L of 30 decoder layers (``weak_exit_layer``); one
  copy of the weights, the weak pass stops at layer L.
- weak prompt empty: SmolLM2 over itself, the weak side reading the response after an empty user turn
  (``weak_prompt="empty"``): two passes of one model, the second without the prompt.
- ensemble vanilla + no prompt: the default pair with a second pair, SmolLM2 over itself without the prompt
  (``extra_pairs``): SmolLM2's pass with the prompt is shared by both pairs and runs once.
- token floor: vanilla with ``token_floor=10``: it works on per-token log-probs already computed, so its
  cost is vanilla's; listed to show that (``token_ratio_clip`` works the same way on an early-exit pair).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from cdr.doctor import machine_summary
from proc_status import status_mib

HERE = Path(__file__).resolve().parent
STRONG = "smollm2-135m-instruct"


def configurations(exit_layers: list[int]) -> dict[str, dict]:
    out = {"vanilla": {}, "token floor 10": {"token_floor": 10.0}}
    for layer in exit_layers:
        out[f"early-exit {layer}"] = {"strong": STRONG, "weak": STRONG, "weak_exit_layer": layer}
    out["weak prompt empty"] = {"strong": STRONG, "weak": STRONG, "weak_prompt": "empty"}
    out["ensemble vanilla + no prompt"] = {"extra_pairs": f"weak={STRONG},weak_prompt=empty"}
    return out


def child(options_json: str, n: int, out_path: str) -> None:
    """Runs in a subprocess: load one configuration, score n responses once."""
    from cdr import DensityRatio
    from cdr.pipelines.evaluate import conversations, load_rewardbench

    rows, _ = load_rewardbench("mini", log=lambda _: None)
    convs = [c for row in rows for c in conversations(row)][:n]
    t0 = time.perf_counter()
    reward = DensityRatio(cache="none", **json.loads(options_json))
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    results = reward.score(convs)
    seconds = time.perf_counter() - t0
    Path(out_path).write_text(
        json.dumps(
            {
                "responses": len(convs),
                "load_s": load_s,
                "seconds": seconds,
                "rewards": [r.reward for r in results],
                "peak_rss_mib": status_mib("VmHWM"),
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=60)
    parser.add_argument("--exit-layers", default="8,15,22")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(HERE / "results" / "reward_ideas_cost.json"))
    parser.add_argument("--child", nargs=3, metavar=("OPTIONS", "N", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    configs = configurations([int(x) for x in args.exit_layers.split(",") if x])
    names = list(configs)
    best: dict[str, dict] = {}
    tmp = Path(args.out).with_suffix(".child.json")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    for round_ in range(args.rounds):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            print(f"  round {round_ + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--child", json.dumps(configs[name]), str(args.responses), str(tmp)]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            result = json.loads(tmp.read_text())
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    tmp.unlink(missing_ok=True)
    base = best["vanilla"]
    assert best["token floor 10"]["responses"] == base["responses"]
    lines = [
        f"{args.responses} mini responses, cache off, fastest of {args.rounds} rounds; {machine_summary()}; "
        f"{platform.python_version()}",
        "",
        "| configuration | load s | s per reward | relative to vanilla | peak RSS MiB |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        r = best[name]
        per = r["seconds"] / r["responses"]
        rel = per / (base["seconds"] / base["responses"])
        lines.append(f"| {name} | {r['load_s']:.1f} | {per:.3f} | {rel:.2f}x | {r['peak_rss_mib']:.0f} |")
    print("\n".join(lines))
    Path(args.out).write_text(
        json.dumps({"machine": machine_summary(), "rounds": args.rounds, "results": best, "table": lines}, indent=1)
    )


if __name__ == "__main__":
    main()
