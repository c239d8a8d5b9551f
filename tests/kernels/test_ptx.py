"""Every kernel compiles to PTX for sm_70, sm_80 and sm_90, with no float64 and no spills.

``gpunn.ptx.kernel_report`` compiles each kernel with the exact signatures the
backend launches it with (``KernelSpec.signatures``, checked against real launches
in test_simulated.py) and runs ptxas on the result.  It runs once per session, in
a subprocess when this process has the CUDA simulator on (``compile_ptx`` needs
the real numba.cuda).  No GPU is needed; ptxas comes from the nvidia-cuda-nvcc
wheel (``numba-cuda[cu12]``), and a missing ptxas fails this tier, saying so.
"""
from __future__ import annotations

import pytest

from gpunn import ptx
from gpunn.env import numba_numpy_problem
from gpunn.kernels.launch import MAX_STATIC_SHARED_BYTES

pytestmark = pytest.mark.ptx

ARCHS = ("sm_70", "sm_80", "sm_90")
REGISTERS_PER_SM = 65536

# A real `ptxas -v --gpu-name sm_90` report (CUDA 12.9) for gemm_kernel.
CAPTURED = """\
ptxas info    : 8 bytes gmem
ptxas info    : Compiling entry function '_ZN5gpunn7kernels4gemm11gemm_kernelB3v17B92cw51cXTLSUwv1sDUaKthqaNgoKmjgOR3W3CwAkMXLaJtQYkOIgxJU0gCqOkEJoHkbttqdVhoqlspQGNFHSgJ5BnXagIAE5ArrayIfLi2E1C7mutable7alignedE5ArrayIfLi2E1C7mutable7alignedE5ArrayIfLi2E1C7mutable7alignedEiii' for 'sm_90'
ptxas info    : Function properties for _ZN5gpunn7kernels4gemm11gemm_kernelB3v17B92cw51cXTLSUwv1sDUaKthqaNgoKmjgOR3W3CwAkMXLaJtQYkOIgxJU0gCqOkEJoHkbttqdVhoqlspQGNFHSgJ5BnXagIAE5ArrayIfLi2E1C7mutable7alignedE5ArrayIfLi2E1C7mutable7alignedE5ArrayIfLi2E1C7mutable7alignedEiii
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 60 registers, used 1 barriers, 8448 bytes smem
ptxas info    : Compile time = 77.963 ms
ptxas info    : Compiling entry function 'spilly' for 'sm_70'
ptxas info    : Function properties for spilly
    48 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, 380 bytes cmem[0]
"""


@pytest.fixture(scope="session")
def report():
    """The records of every (kernel, signature, arch), compiled and assembled once."""
    problem = numba_numpy_problem()
    if problem is not None:  # a failure, not a skip: this tier is what proves the kernels compile
        pytest.fail(problem)
    try:
        ptx.find_ptxas()
    except ptx.PtxasMissing as exc:
        pytest.fail(str(exc))
    return ptx.kernel_report(ARCHS)


def test_parse_captured_ptxas_output():
    parsed = ptx.parse_ptxas(CAPTURED)
    gemm = next(v for k, v in parsed.items() if "gemm_kernel" in k)
    assert gemm == {"arch": "sm_90", "registers": 60, "spill_store_bytes": 0, "spill_load_bytes": 0,
                    "stack_frame_bytes": 0, "shared_bytes": 8448, "cmem0_bytes": 0, "barriers": 1}
    assert parsed["spilly"] == {"arch": "sm_70", "registers": 255, "spill_store_bytes": 12, "spill_load_bytes": 8,
                                "stack_frame_bytes": 48, "shared_bytes": 0, "cmem0_bytes": 380, "barriers": 0}


def test_f64_detector():
    bad = ["add.f64 %fd3, %fd1, %fd2;", "cvt.f64.f32 %fd1, %f1;", "cvt.rn.f32.f64 %f2, %fd4;",
           "ld.global.f64 %fd1, [%rd2];", "@%p1 fma.rn.f64 %fd5, %fd1, %fd2, %fd3;", ".reg .f64 %fd<4>;"]
    good = ["fma.rn.f32 %f64, %f56, %f63, %f62;", "st.global.f32 [%rd263], %f64;", "// add.f64 in a comment",
            "mov.f32 %f64, 0f00000000;"]
    assert ptx.f64_lines("\n".join(bad)) == bad
    assert ptx.f64_lines("\n".join(good)) == []


def test_every_kernel_compiles_for_every_arch(report):
    expected = {(spec.name, str(sig), arch) for _, spec in ptx.kernel_specs() for sig in spec.signatures
                for arch in ARCHS}
    assert {(r["kernel"], r["signature"], r["arch"]) for r in report} == expected


def test_no_float64_in_any_kernel(report):
    offenders = {f'{r["kernel"]} {r["arch"]}': r["f64_lines"][:3] for r in report if r["f64_lines"]}
    assert not offenders, f"float64 in the PTX: {offenders}"


def test_no_register_spills(report):
    spills = [f'{r["kernel"]} {r["arch"]}: {r["spill_store_bytes"]} B stored, {r["spill_load_bytes"]} B loaded'
              for r in report if r["spill_store_bytes"] or r["spill_load_bytes"]]
    assert not spills, "register spills: " + "; ".join(spills)


def test_resources_fit_the_launch(report):
    for r in report:
        where = f'{r["kernel"]} {r["arch"]}'
        assert r["shared_bytes"] == r["declared_shared_bytes"] <= MAX_STATIC_SHARED_BYTES, where
        assert r["registers"] * r["block"] <= REGISTERS_PER_SM, f"{where}: a block would not fit on an SM"
