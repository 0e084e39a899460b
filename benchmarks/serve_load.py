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

    python benchmarks/serve_load.py --openrlhf sample,batch --samples 1024

OpenRLHF's shapes instead (#25), with its clients' exact request/retry/timeout behaviour (tests/serve_clients.py):
`sample` sends SAMPLES single-sample requests at once (0.9.10+: a new connection per try, 180 s per try
queueing included, 5 tries 1 s apart, Retry-After ignored); `batch` sends one request of SAMPLES samples
(<= 0.9: requests.post with timeout=180, 5 tries). Rows are distinct short ChatML samples ending in
<|im_end|> (a few response tokens). Reported: samples without a reward after 5 tries, tries per sample,
latency percentiles (first try to answer), wall time, and server RSS (peak sampled every 0.5 s, after).
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
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cdr.cli",
                "score",
                str(rows),
                "-o",
                str(out),
                "--cache",
                "none",
                "-q",
                *args.reward_args,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return [json.loads(line)["reward"] for line in out.open()]


class Server:
    def __init__(self, args, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cdr.cli",
                "serve",
                "--port",
                str(self.port),
                "--cache",
                "none",
                "--log-level",
                "warning",
                *args.reward_args,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
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
    return {
        "requests": len(results),
        "ok": len(ok),
        "503": sum(r[1] == 503 for r in results),
        "other": sum(r[1] not in (200, 503) for r in results),
        "seconds": seconds,
        "req_per_s": len(ok) / seconds,
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
        "mean_s": statistics.fmean(lat) if lat else float("nan"),
    }


def openrlhf_rows(n: int, offset: int) -> list[tuple[str, str]]:
    """(query, prompt) as OpenRLHF sends them for a ChatML policy: distinct, a few response tokens, EOS."""
    rows = []
    for i in range(offset, offset + n):
        prompt = f"<|im_start|>user\nWhat is {i} plus {i % 9}?<|im_end|>\n<|im_start|>assistant\n"
        rows.append((prompt + f"{i + i % 9}.<|im_end|>", prompt))
    return rows


class RssSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, None

    def __enter__(self):
        import threading

        self._stop = threading.Event()

        def run():
            while not self._stop.is_set():
                self.peak = max(self.peak, status_mib("VmRSS", self.pid))
                self._stop.wait(0.5)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def percentiles(values) -> dict:
    v = sorted(x for x in values if x is not None)
    pick = lambda p: round(v[min(len(v) - 1, int(p * len(v)))], 2) if v else None  # noqa: E731
    return {"p50_s": pick(0.5), "p90_s": pick(0.9), "p99_s": pick(0.99), "max_s": round(v[-1], 2) if v else None}


def openrlhf_main(args) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from serve_clients import post_batch_0_8, rollout_0_9

    server = Server(args, "--max-batch", str(args.max_batch))
    report = {
        "samples": args.samples,
        "reward_args": args.reward_args,
        "max_batch": args.max_batch,
        "rss_mib_after_start": round(status_mib("VmRSS", server.proc.pid)),
    }
    offset = 0
    try:
        for shape in args.openrlhf.split(","):
            rows = openrlhf_rows(args.samples, offset)
            offset += args.samples
            t0 = time.perf_counter()
            with RssSampler(server.proc.pid) as rss:
                if shape == "sample":
                    answers, tries, seconds = asyncio.run(
                        rollout_0_9(f"{server.url}/get_reward", rows, args.try_timeout_s)
                    )
                    failed = sum(isinstance(a, Exception) for a in answers)
                    unscorable = sum(
                        a["extra_logs"]["cdr_unscorable"][0] for a in answers if not isinstance(a, Exception)
                    )
                    n_tries = [len(t) for t in tries]
                    lat = percentiles(seconds)
                elif shape == "batch":
                    tries_b: list = []
                    try:
                        body = post_batch_0_8(
                            f"{server.url}/get_reward",
                            {
                                "query": [q for q, _ in rows],
                                "prompts": [p for _, p in rows],
                                "labels": [None] * len(rows),
                            },
                            args.try_timeout_s,
                            tries_b,
                        )
                        failed = len(rows) - len(body["rewards"])
                        unscorable = sum(body["extra_logs"]["cdr_unscorable"])
                    except RuntimeError:
                        failed, unscorable = len(rows), 0
                    n_tries, lat = [len(tries_b)], {"try_statuses": tries_b}
                else:
                    raise SystemExit(f"--openrlhf: unknown shape {shape!r} (sample, batch)")
            wall = time.perf_counter() - t0
            report[shape] = {
                "failed_samples": failed,
                "unscorable_samples": unscorable,
                "wall_s": round(wall, 1),
                "samples_per_s": round((len(rows) - failed) / wall, 3),
                "tries": {str(k): n_tries.count(k) for k in sorted(set(n_tries))},
                **lat,
                "rss_mib_peak": round(rss.peak),
                "rss_mib_after": round(status_mib("VmRSS", server.proc.pid)),
            }
            print(shape, json.dumps(report[shape]), file=sys.stderr, flush=True)
        report["healthy_after"] = httpx.get(f"{server.url}/health").json()["status"] == "ok"
        report["server_metrics"] = [
            line
            for line in httpx.get(f"{server.url}/metrics").text.splitlines()
            if line.startswith(
                ("cdr_result_cache_hits_total", "cdr_client_disconnects_total", "cdr_unscorable_rows_total")
            )
        ]
    finally:
        server.stop()
    out = Path(args.out if args.out != DEFAULT_OUT else ROOT / "benchmarks" / "results" / "serve_openrlhf.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


DEFAULT_OUT = str(ROOT / "benchmarks" / "results" / "serve_load.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--compare-requests", type=int, default=200, help="requests per server in the batching comparison")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--reward-args", default="", help="extra reward options for both score and serve, one string")
    ap.add_argument(
        "--out", default=DEFAULT_OUT, help="default: results/serve_load.json (serve_openrlhf.json with --openrlhf)"
    )
    ap.add_argument("--openrlhf", help="OpenRLHF's shapes instead of the load test: sample, batch or sample,batch")
    ap.add_argument("--samples", type=int, default=1024, help="samples per OpenRLHF shape")
    ap.add_argument("--try-timeout-s", type=float, default=180.0, help="OpenRLHF's timeout per try")
    args = ap.parse_args()
    args.reward_args = shlex.split(args.reward_args)
    if args.openrlhf:
        return openrlhf_main(args)
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
    single_s = summarize(
        *asyncio.run(drive(single_server.url, convs, args.compare_requests, args.clients, args.timeout_s))
    )
    single_server.stop()

    report = {
        "load": load,
        "max_abs_reward_diff": max(diffs) if diffs else None,
        "wrong_rewards": wrong,
        "healthy_after": healthy,
        "rss_mib": rss,
        "rss_samples": samples,
        "batching": {
            "max_batch": args.max_batch,
            "batched": batched_s,
            "batch_size_1": single_s,
            "speedup": batched_s["req_per_s"] / single_s["req_per_s"],
        },
        "clients": args.clients,
        "distinct_conversations": len(convs),
        "reward_args": args.reward_args,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print("| run | requests | ok | 503 | other | req/s | p50 s | p99 s |\n|---|---|---|---|---|---|---|---|")
    for name, s in (("load test", load), (f"max batch {args.max_batch}", batched_s), ("max batch 1", single_s)):
        print(
            f"| {name} | {s['requests']} | {s['ok']} | {s['503']} | {s['other']} | {s['req_per_s']:.2f} | "
            f"{s['p50_s']:.2f} | {s['p99_s']:.2f} |"
        )
    print(
        f"\nrewards equal to offline `cdr score`: {len(diffs) - wrong}/{len(diffs)} (max abs diff "
        f"{report['max_abs_reward_diff']:.2e})"
    )
    print(f"batching speed-up: {report['batching']['speedup']:.2f}x; healthy afterwards: {healthy}")
    print(
        f"server RSS MiB: after start {rss['after_start']:.0f}, after load {rss['after_load']:.0f}; samples {samples}"
    )


if __name__ == "__main__":
    main()
