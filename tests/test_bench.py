"""gpunn bench: sizes, validation before timing, and the command's outputs."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpunn.bench import KERNELS, ValidationFailed, bench, mismatches, parse_size
from gpunn.env import simulator_on
from gpunn.roofline import Peaks

PEAK_ARGS = ["--peak-gflops", "100", "--peak-gbs", "10"]
TINY = {"softmax": "6x10", "softmax-cross-entropy": "6x10", "bias-act": "6x10", "sgd-update": "100", "gemm": "5x7x23"}
OPTIONS = {"act": "tanh", "momentum": 0.9, "lr": 0.1}


def gpunn(*args, env=None):
    return subprocess.run([sys.executable, "-m", "gpunn", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_sizes_parse_in_each_kernels_form():
    assert parse_size(KERNELS["softmax"], "4096x10") == (4096, 10)
    assert parse_size(KERNELS["softmax"], "10", rows=64) == (64, 10)
    assert parse_size(KERNELS["sgd-update"], "1e6") == (1_000_000,)
    assert parse_size(KERNELS["gemm"], "128x512x784") == (128, 512, 784)
    assert parse_size(KERNELS["gemm"], "256") == (256, 256, 256)
    for kernel, text in (("softmax", "4x0"), ("softmax", "axb"), ("gemm", "2x3"), ("sgd-update", "1.5")):
        with pytest.raises(ValueError, match="size"):
            parse_size(KERNELS[kernel], text)


def test_mismatches_use_atol_plus_rtol_times_the_reference():
    ref = np.array([1.0, 100.0, 0.0, 5.0])
    got = np.array([1.0 + 2e-3, 100.0 + 5e-2, np.nan, 5.0], np.float32)
    # tolerances: 1e-3 + 1e-3*|ref| = 2e-3, 0.101, 1e-3, 6e-3: only the NaN is out
    count, lines = mismatches(got, ref, rtol=1e-3, atol=1e-3)
    assert count == 1 and lines[0].startswith("[2]: got nan")


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_numpy_variant_is_validated_and_timed(name):
    kernel = KERNELS[name]
    sizes = [parse_size(kernel, TINY[name])]
    res = bench(kernel, sizes, OPTIONS, reps=2, warmup=0, wanted=["numpy"], peaks=Peaks(100.0, 10.0, "t", "t"))
    assert res.variants == ["numpy"] and res.seconds["numpy"][0] > 0 and res.values["numpy"][0] > 0
    assert res.peak == (100.0 if kernel.metric == "GFLOP/s" else 10.0)
    d = res.as_dict()
    assert d["validated"] and d["variants"]["numpy"][kernel.metric] == res.values["numpy"]


def test_a_wrong_variant_fails_validation_before_anything_is_timed():
    good = KERNELS["softmax"]

    def off_by_a_bit(be, a, o):  # the float32 variants are wrong; the float64 reference is not
        good.run(be, a, o)
        if a["out"].dtype == np.float32:
            a["out"][1, 2] += 1e-2

    broken = dataclasses.replace(good, run=off_by_a_bit)
    with pytest.raises(ValidationFailed, match=r"(?s)numpy differs .* in 1 of 60 elements of out.*\n  \[1, 2\]: got"):
        bench(broken, [(6, 10)], OPTIONS, reps=2, warmup=0, wanted=["numpy"])


def test_unknown_variant_is_a_one_line_error():
    r = gpunn("bench", "softmax", "--sizes", "4x10", "--variants", "nope", *PEAK_ARGS, env={"NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 2 and "variant 'nope' is not available" in r.stderr and "Traceback" not in r.stderr


def test_bench_command_prints_a_table_and_writes_json(tmp_path):
    j = tmp_path / "b.json"
    r = gpunn("bench", "gemm", "--sizes", "8x9x10,16", "--reps", "3", "--variants", "numpy", *PEAK_ARGS,
              "--json", j, env={"NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 0, r.stderr
    assert "GFLOP/s" in r.stdout and "8x9x10" in r.stdout and "16x16x16" in r.stdout
    d = json.loads(j.read_text())
    assert d["kernel"] == "gemm" and d["sizes"] == [[8, 9, 10], [16, 16, 16]] and d["peak"] == 100
    assert all(v > 0 for v in d["variants"]["numpy"]["GFLOP/s"])


def test_plot_is_a_png_or_a_clear_error(tmp_path):
    png = tmp_path / "b.png"
    r = gpunn("bench", "sgd-update", "--sizes", "100,1000", "--reps", "2", "--variants", "numpy", *PEAK_ARGS,
              "--plot", png, env={"NUMBA_ENABLE_CUDASIM": "0"})
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert r.returncode == 2 and "--plot needs matplotlib" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.cudasim
@pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off")
def test_our_kernels_are_validated_in_the_simulator_but_not_timed():
    pytest.importorskip("numba")
    from gpunn.backend.ops import OPS

    for name in ("softmax-cross-entropy", "gemm", "bias-act"):
        kernel = KERNELS[name]
        res = bench(kernel, [parse_size(kernel, TINY[name])], OPTIONS, reps=2, warmup=0)
        ours = list(OPS[kernel.op].versions) or ["ours"]  # every kernel version of the op, or its one kernel
        assert res.variants == ["numpy", *ours] and all(res.seconds[v] == [None] for v in ours)
        assert res.default == OPS[kernel.op].version and "not timed" in res.note


@pytest.mark.cudasim
def test_bench_command_in_the_simulator_says_what_it_did():
    pytest.importorskip("numba")
    r = gpunn("bench", "bias-act", "--sizes", "3x10", "--act", "sigmoid", "--reps", "2",
              env={"NUMBA_ENABLE_CUDASIM": "1"})
    assert r.returncode == 0, r.stderr
    assert "valid, not timed" in r.stdout and "simulator" in r.stdout
