"""server/precision.py: when the server warns about serving an int8 model, by the embedded models' manifests."""

import dataclasses
from pathlib import Path

from server.precision import cpu_int8_instructions, precision_warnings
from server.repository import load_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
FLOAT = load_manifest(MODELS / "repository" / "auxnet56_5-cifar10")
INT8 = load_manifest(MODELS / "repository-int8" / "auxnet56_5-cifar10-int8")


def test_a_float_model_never_warns():
    assert FLOAT.precision == "fp32"
    assert precision_warnings(FLOAT, "cuda", cpu_instructions=[]) == []


def test_int8_on_a_gpu_provider_says_to_export_in_float():
    (w,) = precision_warnings(INT8, "cuda", cpu_instructions=["avx512_vnni"])
    assert w == ("model auxnet56_5-cifar10-int8 is int8 (exported with --int8, for CPUs) but runs on cuda: export it "
                 "without --int8 for a GPU")


def with_quantization(info, **fields):
    m = info.manifest
    return dataclasses.replace(info, manifest={**m, "quantization": {**m["quantization"], **fields}})


def test_full_range_int8_on_a_cpu_without_the_measuring_cpus_instructions_warns():
    # An export with --int8-full-range on a VNNI CPU (the embedded twin before 2026-12-01; such manifests may
    # also lack the reduce_range field: full range).
    full = with_quantization(INT8, reduce_range=False, measured_on={"cpu_int8_instructions": ["avx512_vnni"]})
    (w,) = precision_warnings(full, "cpu", cpu_instructions=[])
    assert "accuracy was measured on a CPU with avx512_vnni; this CPU has no int8 dot-product instructions" in w
    assert "or re-export with --int8 and without --int8-full-range" in w
    assert precision_warnings(full, "cpu", cpu_instructions=["avx_vnni"]) == []
    legacy = dataclasses.replace(full, manifest={**full.manifest, "quantization": {
        k: v for k, v in full.manifest["quantization"].items() if k != "reduce_range"}})
    assert len(precision_warnings(legacy, "cpu", cpu_instructions=[])) == 1


def test_seven_bit_weights_answer_the_same_without_vnni_so_no_warning():
    # The embedded twin: 7-bit weights (export's default), measured on a CPU without VNNI.
    assert INT8.manifest["quantization"]["reduce_range"] is True
    measured_with_vnni = with_quantization(INT8, measured_on={"cpu_int8_instructions": ["avx512_vnni"]})
    for info in (INT8, measured_with_vnni):
        assert precision_warnings(info, "cpu", cpu_instructions=[]) == []
        assert len(precision_warnings(info, "cuda", cpu_instructions=[])) == 1  # still a CPU model


def test_this_cpus_instructions_are_read_from_its_flags():
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    assert cpu_int8_instructions() == sorted({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"} & set(flags.split()))
