"""Load test of `cdr serve` on loopback: concurrent clients, throughput, latency, correctness, memory.

    python benchmarks/serve_load.py --requests 2000 --clients 32 --compare-requests 200

1. `cdr score` scores the distinct rows offline (the reference rewards).
2. A server with micro-batching takes REQUESTS requests (one conversation each, cycling over the demo
   set's 80 conversations) from CLIENTS concurrent clients; every answer must equal the offline reward
   (up to float32 noise from different batch padding) or be an intentional 503.
3. Server memory (RSS) is sampled before, during and after; /health must answer afterwards.
4. Micro-batching gain: the same COMPARE_REQUESTS requests against the batched server and a server with
   --max-batch 1, one after the other in this run.
Everything binds to 127.0.0.1 and is bounded by --requests and --timeout-s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from proc_status import status_mib

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_conversations() -> list[list[dict]]:
    from cdr.pipelines.demo import demo_rows, expand

    return [row["messages"] for row in expand(demo_rows())]


def offline_rewards(convs, args) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        rows = Path(tmp) / "rows.jsonl"
        rows.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
        out = Path(tmp) / "scores.jsonl"
        subprocess.run([sys.executable, "-m", "cdr.cli", "score", str(rows), "-o", str(out), "--cache", "none", "-q",
                        *args.reward_args], check=True, stdout=subprocess.DEVNULL)
        return [json.loads(line)["reward"] for line in out.open()]


class Server:
    def __init__(self, args, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "cdr.cli", "serve", "--port", str(self.port), "--cache", "none",
                                      "--log-level", "warning", *args.reward_args, *extra],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.time() + 600
        while True:
            if self.proc.poll() is not None or time.time() > deadline:
                raise SystemExit("the server did not start")
            try:
                if httpx.get(f"{self.url}/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(120)


async def drive(url: str, convs, n_requests: int, clients: int, timeout_s: float, on_done=None):
    """CLIENTS workers share a counter of requests; each request is one conversation (request i -> convs[i % len])."""
    results: list[tuple[int, int, float, float | None]] = []  # (index, status, latency, reward)
    counter = iter(range(n_requests))
    deadline = time.time() + timeout_s

    async def worker(client: httpx.AsyncClient):
        for i in counter:
            if time.time() > deadline:
                return
            t0 = time.perf_counter()
            r = await client.post(f"{url}/v1/reward", json={"conversations": [convs[i % len(convs)]]})
            reward = r.json()["results"][0]["reward"] if r.status_code == 200 else None
            results.append((i, r.status_code, time.perf_counter() - t0, reward))
            if on_done:
                on_done(len(results))

    start = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*[worker(client) for _ in range(clients)])
    return results, time.perf_counter() - start


def summarize(results, seconds):
    ok = [r for r in results if r[1] == 200]
    lat = sorted(r[2] for r in ok)
    pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"requests": len(results), "ok": len(ok), "503": sum(r[1] == 503 for r in results),
            "other": sum(r[1] not in (200, 503) for r in results), "seconds": seconds,
            "req_per_s": len(ok) / seconds, "p50_s": pct(0.5), "p99_s": pct(0.99),
            "mean_s": statistics.fmean(lat) if lat else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--compare-requests", type=int, default=200, help="requests per server in the batching comparison")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--reward-args", default="", help="extra reward options for both score and serve, one string")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.json"))
    args = ap.parse_args()
    args.reward_args = shlex.split(args.reward_args)
    from tqdm import tqdm

    convs = demo_conversations()
    t0 = time.time()
    reference = offline_rewards(convs, args)
    print(f"offline cdr score of {len(convs)} distinct conversations: {time.time() - t0:.1f} s", file=sys.stderr)

    server = Server(args, "--max-batch", str(args.max_batch))
    rss = {"after_start": status_mib("VmRSS", server.proc.pid)}
    bar = tqdm(total=args.requests, desc="load test", unit="req", file=sys.stderr)
    samples = []

    def progress(done: int) -> None:
        bar.update(1)
        if done % 250 == 0:
            samples.append((done, status_mib("VmRSS", server.proc.pid)))

    results, seconds = asyncio.run(drive(server.url, convs, args.requests, args.clients, args.timeout_s, progress))
    bar.close()
    rss["after_load"] = status_mib("VmRSS", server.proc.pid)
    healthy = httpx.get(f"{server.url}/health").json()["status"] == "ok"
    diffs = [abs(reward - reference[i % len(convs)]) for i, status, _, reward in results if status == 200]
    wrong = sum(d > 1e-4 * max(1.0, abs(reference[0])) for d in diffs)
    load = summarize(results, seconds)

    # batching gain: the same requests, batched server vs batch size 1
    batched_s = summarize(*asyncio.run(drive(server.url, convs, args.compare_requests, args.clients, args.timeout_s)))
    server.stop()
    single_server = Server(args, "--max-batch", "1")
    single_s = summarize(*asyncio.run(drive(single_server.url, convs, args.compare_requests, args.clients, args.timeout_s)))
    single_server.stop()

    report = {"load": load, "max_abs_reward_diff": max(diffs) if diffs else None, "wrong_rewards": wrong,
              "healthy_after": healthy, "rss_mib": rss, "rss_samples": samples,
              "batching": {"max_batch": args.max_batch, "batched": batched_s, "batch_size_1": single_s,
                           "speedup": batched_s["req_per_s"] / single_s["req_per_s"]},
              "clients": args.clients, "distinct_conversations": len(convs), "reward_args": args.reward_args}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("| run | requests | ok | 503 | other | req/s | p50 s | p99 s |\n|---|---|---|---|---|---|---|---|")
    for name, s in (("load test", load), (f"max batch {args.max_batch}", batched_s), ("max batch 1", single_s)):
        print(f"| {name} | {s['requests']} | {s['ok']} | {s['503']} | {s['other']} | {s['req_per_s']:.2f} | "
              f"{s['p50_s']:.2f} | {s['p99_s']:.2f} |")
    print(f"\nrewards equal to offline `cdr score`: {len(diffs) - wrong}/{len(diffs)} (max abs diff {report['max_abs_reward_diff']:.2e})")
    print(f"batching speed-up: {report['batching']['speedup']:.2f}x; healthy afterwards: {healthy}")
    print(f"server RSS MiB: after start {rss['after_start']:.0f}, after load {rss['after_load']:.0f}; samples {samples}")


if __name__ == "__main__":
    main()
