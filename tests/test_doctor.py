"""`cdr doctor`: the real command on this machine (a short real micro-benchmark), the cpuinfo parser on
synthetic text, and the precision rule on synthetic facts."""

import json

from cdr.backends import BACKENDS
from cdr.cpu import parse_cpu_flags
from cdr.doctor import (
    BACKEND_NEEDS,
    CHECK_ADVICE,
    CPU_FEATURES,
    MIN_AGREEMENT,
    RECORDED_AGREEMENT,
    cpu_features,
    parse_cpu_model,
    recommend,
)
from conftest import cdr_in_process

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile
bugs\t\t: spectre_v1

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile
"""

LSCPU = """Architecture:                            x86_64
Model name:                              AMD EPYC
Flags:                                   fpu sse2 avx fma avx2 sha_ni
"""


def test_doctor_prints_the_cpu_features_and_a_recommendation():
    proc = cdr_in_process("doctor", "--seconds", "1")
    assert proc.returncode == 0, proc.stderr
    for feature in CPU_FEATURES:
        assert f"{feature} yes" in proc.stdout or f"{feature} no" in proc.stdout or f"{feature} unknown" in proc.stdout
    assert any(f"recommendation: --dtype {d}" in proc.stdout for d in ("float32", "bfloat16", "int8"))
    assert "GFLOP/s" in proc.stdout and "--dtype auto means" in proc.stdout
    assert CHECK_ADVICE in proc.stdout
    assert "log-softmax normaliser" in proc.stdout and "float32" in proc.stdout


def test_doctor_json_has_the_stable_keys():
    proc = cdr_in_process("doctor", "--seconds", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert set(report) == {"cdr_version", "machine", "engines", "backends", "benchmark", "recommendation"}
    machine = report["machine"]
    for key in ("cpu_model", "logical_cpus", "torch_threads", "memory_total_gib", "torch_version", "cuda_available"):
        assert key in machine
    assert set(machine["cpu_features"]) == set(CPU_FEATURES)
    assert set(report["backends"]) == set(BACKENDS)
    assert report["engines"]["transformers"]["installed"] and report["backends"]["hf"]["usable"]
    precisions = report["benchmark"]["precisions"]
    assert {"float32", "bfloat16"} <= set(precisions)
    assert ("int8" in precisions) != machine["cuda_available"]  # int8 runs on a CPU only
    assert precisions["float32"]["ratio_to_float32"] == 1.0 and all(p["runs"] >= 1 for p in precisions.values())
    assert report["recommendation"]["dtype"] in ("float32", "bfloat16", "int8")
    assert report["recommendation"]["auto_means"] == ("bfloat16" if machine["cuda_available"] else "float32")


def test_every_registered_backend_names_what_it_needs():
    assert set(BACKEND_NEEDS) == set(BACKENDS)


def test_cpu_flags_from_proc_cpuinfo_text():
    features = cpu_features(parse_cpu_flags(CPUINFO))
    assert features == {
        "avx2": True,
        "fma": True,
        "avx512f": True,
        "avx512_bf16": True,
        "avx512_vnni": True,
        "avx_vnni": False,
        "amx_bf16": True,
        "amx_int8": False,
    }
    assert parse_cpu_model(CPUINFO) == "Intel(R) Xeon(R) Platinum 8480+"


def test_cpu_flags_from_lscpu_text_and_none_when_absent():
    features = cpu_features(parse_cpu_flags(LSCPU))
    assert features["avx2"] and features["fma"] and not features["avx512f"] and not features["avx512_bf16"]
    assert parse_cpu_model(LSCPU) == "AMD EPYC"
    assert parse_cpu_flags("processor : 0\n") is None
    assert set(cpu_features(None).values()) == {None}


def facts(**features):
    return {"cpu_features": {name: features.get(name, False) for name in CPU_FEATURES}, "cuda_bf16_supported": None}


def bench(bf16_ratio, device="cpu", int8_ratio=None):
    precisions = {"float32": {"ratio_to_float32": 1.0}, "bfloat16": {"ratio_to_float32": bf16_ratio}}
    if int8_ratio is not None:
        precisions["int8"] = {"ratio_to_float32": int8_ratio}
    return {"device": device, "precisions": precisions}


def agreement(equal, rows=230):
    return {"equal": equal, "rows": rows, "where": "docs/benchmarks.md section 15"}


def kept(bf16=None, int8=None):
    """Recorded mini-set agreements for recommend(): each precision given by its equal decisions of 230."""
    out = {}
    if bf16 is not None:
        out["bfloat16"] = agreement(bf16)
    if int8 is not None:
        out["int8"] = agreement(int8) if isinstance(int8, int) else int8
    return out


def test_bfloat16_is_recommended_only_where_native_fast_and_it_kept_the_decisions():
    assert recommend(facts(avx512_bf16=True), bench(1.9), kept(bf16=230))["dtype"] == "bfloat16"
    assert recommend(facts(amx_bf16=True), bench(1.2), kept(bf16=228))["dtype"] == "bfloat16"
    native_but_slow = recommend(facts(avx512_bf16=True), bench(1.1), kept(bf16=230))
    assert native_but_slow["dtype"] == "float32" and "below 1.2x" in native_but_slow["reason"]
    fast_but_not_native = recommend(facts(avx2=True, avx512f=True), bench(1.5), kept(bf16=230))
    assert fast_but_not_native["dtype"] == "float32" and "not native" in fast_but_not_native["reason"]
    assert fast_but_not_native["auto_means"] == "float32" and fast_but_not_native["check"] == CHECK_ADVICE
    # native and fast, but it changed too many decisions: float32, and the reason says by how much
    flips = recommend(facts(amx_bf16=True), bench(4.2), kept(bf16=226))
    assert flips["dtype"] == "float32" and "kept 226 of 230 pair decisions" in flips["reason"]
    assert "(98.3%" in flips["reason"] and "below 99%" in flips["reason"]


def test_the_recorded_agreement_is_the_measured_one_and_keeps_float32_on_a_cpu():
    # the record in doctor.py is the run of docs/benchmarks.md section 15 (226 of 230): below the bar
    assert RECORDED_AGREEMENT["bfloat16"]["equal"] / RECORDED_AGREEMENT["bfloat16"]["rows"] < MIN_AGREEMENT
    assert recommend(facts(avx512_bf16=True, amx_bf16=True), bench(4.2))["dtype"] == "float32"


def test_on_cuda_native_means_the_device_reports_bf16():
    gpu = {"cpu_features": facts()["cpu_features"], "cuda_bf16_supported": True}
    # the GPU's working precision: recommended without a record, the CPU record quoted
    on_gpu = recommend(gpu, bench(3.0, device="cuda"), kept(bf16=226))
    assert on_gpu["dtype"] == "bfloat16" and "on CUDA bfloat16 is the working precision" in on_gpu["reason"]
    old_gpu = recommend({**gpu, "cuda_bf16_supported": False}, bench(3.0, device="cuda"))
    assert old_gpu["dtype"] == "float32" and old_gpu["auto_means"] == "bfloat16" and not old_gpu["auto_matches"]


def test_int8_only_where_faster_by_the_margin_and_it_kept_the_decisions():
    cpu = facts(avx2=True, fma=True)
    chosen = recommend(cpu, bench(0.2, int8_ratio=1.6), kept(int8=229))
    assert chosen["dtype"] == "int8" and "int8 measured 1.60x float32" in chosen["reason"]
    assert "kept 229 of 230 pair decisions" in chosen["reason"] and chosen["auto_matches"] is False
    slow = recommend(cpu, bench(0.2, int8_ratio=1.1), kept(int8=230))
    assert slow["dtype"] == "float32" and "below 1.2x" in slow["reason"]
    disagrees = recommend(cpu, bench(0.2, int8_ratio=2.0), kept(int8=int(230 * MIN_AGREEMENT) - 1))
    assert disagrees["dtype"] == "float32" and "below 99%" in disagrees["reason"]
    unmeasured = recommend(cpu, bench(0.2, int8_ratio=2.0), kept(int8={"equal": None, "rows": None, "where": "x"}))
    assert unmeasured["dtype"] == "float32" and "agreement not measured" in unmeasured["reason"]
    # native, fast, agreeing bfloat16 comes first; on CUDA int8 is not benchmarked at all
    assert recommend(facts(amx_bf16=True), bench(1.9, int8_ratio=3.0), kept(230, 230))["dtype"] == "bfloat16"
    # native bfloat16 that flips too many decisions falls through to the int8 rule
    assert recommend(facts(amx_bf16=True), bench(1.9, int8_ratio=3.0), kept(200, 230))["dtype"] == "int8"
    gpu = {"cpu_features": facts()["cpu_features"], "cuda_bf16_supported": False}
    on_gpu = recommend(gpu, bench(0.5, device="cuda"), kept(int8=230))
    assert on_gpu["dtype"] == "float32" and "int8 not measured" in on_gpu["reason"]


def test_seconds_out_of_bounds_is_a_one_line_error():
    for value in ("0", "-1", "nan", "601"):
        proc = cdr_in_process("doctor", "--seconds", value)
        assert proc.returncode == 2, value
        assert proc.stderr.count("\n") == 1 and "--seconds must be between" in proc.stderr, proc.stderr
        assert proc.stdout == ""


def test_machine_summary_names_what_the_cpu_has_and_lacks():
    from cdr.doctor import cpu_features, machine_summary

    facts = {"cpu_model": "AMD EPYC", "logical_cpus": 2, "cpu_features_source": "/proc/cpuinfo"}
    line = machine_summary({**facts, "cpu_features": cpu_features({"avx2", "fma", "avx512_bf16"})})
    assert line.startswith("AMD EPYC, 2 logical CPUs; has avx2, fma, avx512_bf16; lacks avx512f")
    unknown = machine_summary({**facts, "cpu_features_source": None, "cpu_features": cpu_features(None)})
    assert unknown == "AMD EPYC, 2 logical CPUs, CPU features unknown"
