"""Throughput of `cdr score --engine ray` with 1 and 2 actors against the single-process run, side by side.

    python benchmarks/ray_throughput.py --rows 48

Rows: the first ROWS rows of the packaged mini RewardBench set as (prompt, chosen response) score rows,
written to a temporary file (RewardBench text is not committed). Every run scores the same rows with the
embedded default pair, log-prob cache off, on this machine's cores:

- local: one process, torch on all cores;
- ray, 1 actor x all cores;
- ray, N actors x 1 core each (N = cores).

Each run is a fresh `cdr` process (model loading and, for Ray, starting the local cluster and the actors
are inside the wall time, and reported apart where the output says). The rewards of every run are checked
equal to the local run's. Prints a markdown table and writes benchmarks/results/ray_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def score_rows(n: int) -> list[dict]:
    from cdr.pipelines.evaluate import mini_path

    rows = [json.loads(line) for line in open(mini_path(), encoding="utf-8")][:n]
    return [{"id": f"{r['subset']}:{r['id']}", "prompt": r["prompt"], "response": r["chosen"]} for r in rows]


def run(name: str, args: list[str], env: dict) -> dict:
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "cdr.cli", *args], capture_output=True, text=True, env=env)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    load = None
    for line in proc.stderr.splitlines():  # the local run reports its model load time
        if line.startswith("cdr: loaded") and " in " in line:
            load = float(line.rsplit(" in ", 1)[1].split()[0])
    return {"name": name, "wall_s": round(wall, 1), "load_s": load}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=48)
    p.add_argument("--batch-rows", type=int, default=4)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_throughput.json"))
    args = p.parse_args()
    cores = os.cpu_count() or 2
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    from cdr.output import read_output

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in score_rows(args.rows)))
        common = ["--cache", "none", "-q"]
        ray_common = ["--engine", "ray", "--batch-rows", str(args.batch_rows), "--shard-rows", str(args.rows)]
        runs = [
            (
                f"local (1 process, {cores} threads)",
                ["score", str(data), "-o", f"{tmp}/local.jsonl", *common],
                f"{tmp}/local.jsonl",
            ),
            (
                f"ray, 1 actor x {cores} CPUs",
                [
                    "score",
                    str(data),
                    "-o",
                    f"{tmp}/ray1",
                    *ray_common,
                    "--num-actors",
                    "1",
                    "--cpus-per-actor",
                    str(cores),
                    *common,
                ],
                f"{tmp}/ray1",
            ),
            (
                f"ray, {cores} actors x 1 CPU",
                [
                    "score",
                    str(data),
                    "-o",
                    f"{tmp}/ray2",
                    *ray_common,
                    "--num-actors",
                    str(cores),
                    "--cpus-per-actor",
                    "1",
                    *common,
                ],
                f"{tmp}/ray2",
            ),
        ]
        results, reference = [], None
        for name, cmd, output in runs:
            print(f"$ cdr {' '.join(cmd)}", flush=True)
            r = run(name, cmd, env)
            rewards = [row["reward"] for row in read_output(output)]
            reference = reference or rewards
            r["max_abs_diff_vs_local"] = max(abs(a - b) for a, b in zip(rewards, reference))
            r["rows_per_s"] = round(len(rewards) / r["wall_s"], 3)
            results.append(r)
    base = results[0]["wall_s"]
    lines = [
        f"{args.rows} rows (mini set prompts + chosen responses), embedded pair, cache off, {cores} cores",
        "",
        "| run | wall s | rows/s | vs local | max reward diff vs local |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['wall_s']} | {r['rows_per_s']} | {base / r['wall_s']:.2f}x | "
            f"{r['max_abs_diff_vs_local']:.1e} |"
        )
    if results[0]["load_s"] is not None:
        lines.append(f"\nlocal model load: {results[0]['load_s']} s of its wall time")
    print("\n".join(lines))
    Path(args.out).write_text(
        json.dumps({"rows": args.rows, "cores": cores, "batch_rows": args.batch_rows, "runs": results}, indent=2)
    )


if __name__ == "__main__":
    main()
