"""server/precision.py: when the server warns about serving an int8 model, by the embedded models' manifests."""

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


def test_int8_on_a_cpu_without_the_measuring_cpus_instructions_warns():
    assert INT8.manifest["quantization"]["measured_on"]["cpu_int8_instructions"] == ["avx512_vnni"]
    (w,) = precision_warnings(INT8, "cpu", cpu_instructions=[])
    assert "accuracy was measured on a CPU with avx512_vnni; this CPU has no int8 dot-product instructions" in w
    assert precision_warnings(INT8, "cpu", cpu_instructions=["avx_vnni"]) == []


def test_this_cpus_instructions_are_read_from_its_flags():
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    assert cpu_int8_instructions() == sorted({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"} & set(flags.split()))
