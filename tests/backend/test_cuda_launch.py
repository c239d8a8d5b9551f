"""The cuda backend's direct launches and cuBLAS calls, checked on the CPU.

A GPU shows whether a launch *runs* (tests/gpu: a pre-bound launch equals a dispatcher
launch).  What a CPU can show, it shows here:

* the parameters the launcher packs are exactly those Numba's own launch passes
  (``_Kernel._prepare_args``, run with its device-array conversion stubbed: that step
  needs a driver, and only hands over the array's address, shape and dtype), for every
  kernel and signature the backend launches;
* their number and widths are those of the kernel's ``.entry`` in its PTX (sm_90);
* a packed parameter block holds those values;
* the cuBLAS call a row-major GEMM becomes computes ``op(a) @ op(b)`` in a column-major
  SGEMM written with NumPy, for every transpose and irregular shapes.

The first two need the real ``numba.cuda`` (not the simulator), so they run in a
subprocess, as the PTX tier does.
"""
from __future__ import annotations

import hashlib

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpunn.backend.cublas import OP_T, sgemm_arguments

SCRIPT = r"""
import ctypes, json, re, struct, sys
import numpy as np
from numba.core import types
import numba.cuda.dispatcher as dispatcher
from gpunn import ptx
from gpunn.backend.cuda_launch import BoundLaunch, flatten, param_formats

class Layout:  # a C-contiguous array's layout as Numba sees it (strides derived from the shape)
    strides_in_bytes, is_contiguous_c, is_contiguous_f = None, True, False

class DeviceArray:  # what Numba's to_device() hands _prepare_args: address, shape, dtype
    def __init__(self, a):
        self.size, self.dtype, self.shape, self.ptr, self._layout = a.size, a.dtype, a.shape, a.ctypes.data, Layout()

class Hint:
    def __init__(self, value):
        self.value = value
    def to_device(self, retr, stream=0):
        return DeviceArray(self.value)

dispatcher.wrap_arg = Hint  # no driver here: stub the device conversion only

class Kernel:  # _prepare_args reads nothing of its kernel but this
    extensions = []

SHAPES = {1: (11,), 2: (5, 7)}
WIDTH = {"u64": 8, "b64": 8, "s64": 8, "f64": 8, "u32": 4, "s32": 4, "b32": 4, "f32": 4}
rng = np.random.default_rng(0)
checked = []
for module, spec in ptx.kernel_specs():
    for sig in spec.signatures:
        args = []
        for t in sig.args:
            if isinstance(t, types.Array):
                args.append(np.zeros(SHAPES[t.ndim], dtype=str(t.dtype)))
            else:
                args.append(getattr(np, str(t))(rng.integers(1, 100) / 4))
        numba_args = []
        for t, a in zip(sig.args, args):
            dispatcher._Kernel._prepare_args(Kernel(), t, a, 0, [], numba_args)
        numba_args = [v.value if isinstance(v, ctypes._SimpleCData) else v for v in numba_args]
        ours = flatten(sig.args, args)
        formats = param_formats(sig.args)
        code = ptx.compile_ptx(spec, sig, (9, 0))
        entry = re.search(r"\.entry\s+\S+\s*\((.*?)\)", code, re.S).group(1)
        ptx_widths = [WIDTH[t] for t in re.findall(r"\.param\s+\.(\w+)", entry)]
        bound = BoundLaunch(spec.name, 0, 1, 1, formats, ours)
        checked.append({"kernel": spec.name, "numba": numba_args, "ours": ours, "packed": bound.values,
                        "ptx_widths": ptx_widths, "widths": [struct.calcsize(f) for f in formats]})
json.dump(checked, sys.stdout)
"""


@pytest.fixture(scope="module")
def flattened():
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_kernel_is_checked(flattened):
    from gpunn.ptx import kernel_specs

    assert {r["kernel"] for r in flattened} == {spec.name for _, spec in kernel_specs()}


def test_flattened_arguments_are_what_numba_passes(flattened):
    for r in flattened:
        assert r["ours"] == r["numba"], r["kernel"]


def test_parameters_match_the_kernels_ptx(flattened):
    for r in flattened:
        assert r["widths"] == r["ptx_widths"], r["kernel"]


def test_packed_block_holds_the_values(flattened):
    for r in flattened:
        assert r["packed"] == r["ours"], r["kernel"]


def test_an_array_is_numbas_data_model_fields():
    from gpunn.backend.cuda_launch import flatten, param_formats

    pytest.importorskip("numba")
    from numba import float32, int32

    x = np.zeros((3, 5), np.float32)
    values = flatten((float32[:, ::1], int32), (x, np.int32(7)))
    assert values == [0, 0, 15, 4, x.ctypes.data, 3, 5, 20, 4, 7]  # meminfo, parent, size, itemsize, data, shape, strides
    assert param_formats((float32[:, ::1], int32)) == "q" * 9 + "i"
    with pytest.raises(TypeError, match="argument 0: expected a C-contiguous 2-D float32 array"):
        flatten((float32[:, ::1], int32), (x.T, np.int32(7)))


# ---------------------------------------------------------------------------- cuBLAS, row-major
def colmajor(buf, rows, cols, ld):
    """The (rows, cols) column-major matrix with leading dimension ``ld`` over a flat float32 buffer."""
    return np.lib.stride_tricks.as_strided(buf, shape=(rows, cols), strides=(4, 4 * ld))


def sgemm_colmajor(transa, transb, m, n, k, a, lda, b, ldb, beta, c, ldc):
    """cublasSgemm's definition: C = op(A) op(B) + beta C, every matrix column-major."""
    op_a = colmajor(a, k, m, lda).T if transa == OP_T else colmajor(a, m, k, lda)
    op_b = colmajor(b, n, k, ldb).T if transb == OP_T else colmajor(b, k, n, ldb)
    out = colmajor(c, m, n, ldc)
    out[...] = op_a.astype(np.float64) @ op_b + beta * out


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (5, 23, 7), (128, 784, 10), (33, 1, 257)], ids=str)
def test_row_major_gemm_as_a_column_major_sgemm(m, k, n, trans_a, trans_b):
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    out0 = rng.standard_normal((m, n)).astype(np.float32)
    want = (a.T if trans_a else a) @ (b.T if trans_b else b)
    for beta in (0.0, 1.0):  # overwrite, accumulate
        out = out0.copy()
        transa, transb, cm, cn, ck, lda, ldb, ldc = sgemm_arguments(a.shape, b.shape, trans_a, trans_b)
        # cuBLAS's A is gpunn's b, its B gpunn's a: the buffers as they lie in memory
        sgemm_colmajor(transa, transb, cm, cn, ck, b.reshape(-1), lda, a.reshape(-1), ldb, beta,
                       out.reshape(-1), ldc)
        np.testing.assert_allclose(out, want + beta * out0, rtol=1e-5, atol=1e-5 * np.sqrt(k))


def test_the_precision_is_the_handles_math_mode_set_when_it_changes():
    """--precision tf32 is cuBLAS's TF32 tensor-op math mode on the shared handle, set only when the
    precision changes (FP32 again for the next FP32 call); the SGEMM itself is the same call."""
    from gpunn.backend.cublas import PRECISIONS, Cublas

    calls = []

    class Binding:  # nvmath.bindings.cublas, as far as Cublas.gemm calls it
        def set_math_mode(self, handle, mode):
            calls.append(("math", mode))

        def set_stream(self, handle, stream):
            calls.append(("stream", stream))

        def set_workspace(self, handle, ptr, size):
            pass

        def sgemm(self, handle, *args):
            calls.append(("sgemm",))

    class Buf:
        class data:  # noqa: N801 - CuPy's attribute name
            ptr = 0

        def __init__(self, shape):
            self.shape = shape

    blas = object.__new__(Cublas)
    blas._cublas, blas.handle, blas._stream, blas._math = Binding(), 1, None, PRECISIONS["fp32"]
    blas._workspaces, blas._alpha, blas._beta = {7: Buf((8,))}, 0, (0, 0)
    a, b, out = Buf((4, 3)), Buf((3, 2)), Buf((4, 2))
    for precision in ("fp32", "tf32", "tf32", "fp32"):
        blas.gemm(7, a, b, out, False, False, False, precision)
    assert calls == [("stream", 7), ("sgemm",), ("math", 3), ("sgemm",), ("sgemm",), ("math", 0), ("sgemm",)]
    assert PRECISIONS == {"fp32": 0, "tf32": 3}  # CUBLAS_DEFAULT_MATH, CUBLAS_TF32_TENSOR_OP_MATH


# ---------------------------------------------------------------------------- the kernel cache on disk
class FakeCompiled:
    entry_name = "_Z6kernelPf"

    class library:  # noqa: N801 - numba's attribute name
        @staticmethod
        def get_cubin():
            return b"\x7fELF cubin bytes\nwith a newline"


class FakeKernel:
    def __init__(self, **options):
        self.compiles = 0
        self.targetoptions = {"debug": 0, "lineinfo": False, "opt": True, "fastmath": False, **options}

    def compile(self, signature):
        self.compiles += 1
        return FakeCompiled()


class FakeDriver:
    def __init__(self):
        self.loaded = []

    def load(self, image, entry):
        self.loaded.append((image, entry))
        return 0x1000 + len(self.loaded)


@pytest.fixture
def fake_driver(monkeypatch):
    import gpunn.backend.cuda_launch as cl

    d = FakeDriver()
    monkeypatch.setattr(cl, "driver", lambda: d)
    return d


def spec_for(kernel):
    from numba import float32, void

    from gpunn.kernels.launch import KernelSpec

    return KernelSpec("k", kernel, (void(float32[::1]),), 32, 0, "bias_act")


def test_a_second_process_loads_the_cubin_instead_of_compiling(tmp_path, fake_driver):
    pytest.importorskip("numba")
    from gpunn.backend.cuda_launch import Launcher

    kernel = FakeKernel()
    first = Launcher([spec_for(kernel)], cc=(9, 0), cache_dir=tmp_path)
    first.compiled(kernel)
    assert kernel.compiles == 1
    [path] = tmp_path.glob("k-sm90-*.cubin")
    body = b"_Z6kernelPf\n\x7fELF cubin bytes\nwith a newline"
    assert path.read_bytes() == b"gpunn-cubin 1\n" + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    second = Launcher([spec_for(kernel)], cc=(9, 0), cache_dir=tmp_path)  # a new process, as it were
    function, argtypes, formats = second.compiled(kernel)
    assert kernel.compiles == 1 and formats == "q" * 7
    # what runs is what was saved, in both processes: the same image, the same entry
    assert fake_driver.loaded == [(b"\x7fELF cubin bytes\nwith a newline", b"_Z6kernelPf")] * 2
    assert Launcher([spec_for(kernel)], cc=(8, 0), cache_dir=tmp_path).cache_path(
        spec_for(kernel), spec_for(kernel).signatures[0]) != path  # another architecture, another file


def test_a_torn_or_unwritable_cache_means_compiling_again(tmp_path, fake_driver):
    pytest.importorskip("numba")
    from gpunn.backend.cuda_launch import Launcher

    kernel = FakeKernel()
    spec = spec_for(kernel)
    launcher = Launcher([spec], cc=(9, 0), cache_dir=tmp_path)
    launcher.cache_path(spec, spec.signatures[0]).write_bytes(b"no newline here")  # torn
    launcher.compiled(kernel)
    assert kernel.compiles == 1
    blocked = tmp_path / "file"
    blocked.write_text("")
    Launcher([spec], cc=(9, 0), cache_dir=blocked / "under-a-file").compiled(kernel)  # cannot be written
    assert kernel.compiles == 2
    Launcher([spec], cc=(9, 0), cache_dir=None).compiled(kernel)
    assert kernel.compiles == 3


def _one_cubin(tmp_path):
    [path] = tmp_path.glob("k-sm90-*.cubin")
    return path


def test_a_planted_link_is_replaced_never_written_through(tmp_path, fake_driver, capsys):
    pytest.importorskip("numba")
    from gpunn.backend.cuda_launch import Launcher

    kernel = FakeKernel()
    spec = spec_for(kernel)
    launcher = Launcher([spec], cc=(9, 0), cache_dir=tmp_path / "cache")
    path = launcher.cache_path(spec, spec.signatures[0])
    path.parent.mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("the user's own file")
    path.symlink_to(victim)
    launcher.compiled(kernel)
    assert victim.read_text() == "the user's own file"
    assert path.is_file() and not path.is_symlink() and kernel.compiles == 1
    assert "ignoring the kernel cache file" in capsys.readouterr().err


def test_a_fifo_in_the_cache_is_ignored_and_rebuilt_not_read(tmp_path, fake_driver, capsys):
    pytest.importorskip("numba")
    from conftest import within
    from gpunn.backend.cuda_launch import Launcher

    kernel = FakeKernel()
    spec = spec_for(kernel)
    launcher = Launcher([spec], cc=(9, 0), cache_dir=tmp_path)
    os.mkfifo(launcher.cache_path(spec, spec.signatures[0]))
    within(10, lambda: launcher.compiled(kernel))
    assert kernel.compiles == 1 and _one_cubin(tmp_path).is_file()
    [line] = capsys.readouterr().err.splitlines()
    assert "a FIFO, not a regular file" in line and "compiling it again" in line


def test_an_altered_cubin_is_compiled_again(tmp_path, fake_driver, capsys):
    pytest.importorskip("numba")
    from gpunn.backend.cuda_launch import Launcher

    kernel = FakeKernel()
    Launcher([spec_for(kernel)], cc=(9, 0), cache_dir=tmp_path).compiled(kernel)
    path = _one_cubin(tmp_path)
    path.write_bytes(path.read_bytes().replace(b"cubin bytes", b"evil bytes!"))  # same length, other code
    Launcher([spec_for(kernel)], cc=(9, 0), cache_dir=tmp_path).compiled(kernel)
    assert kernel.compiles == 2 and "content hash" in capsys.readouterr().err
    assert all(image == b"\x7fELF cubin bytes\nwith a newline" for image, _ in fake_driver.loaded)


@pytest.mark.parametrize("option", [{"fastmath": True}, {"debug": 1}, {"lineinfo": True}, {"opt": False}])
def test_the_key_holds_the_code_options_and_compiler_versions(option, monkeypatch):
    pytest.importorskip("numba")
    import gpunn.backend.cuda_launch as cl

    def key(kernel):
        spec = spec_for(kernel)
        return cl.Launcher([spec], cc=(9, 0), cache_dir="/c").cache_path(spec, spec.signatures[0])

    plain = key(FakeKernel())
    assert key(FakeKernel()) == plain and key(FakeKernel(**option)) != plain
    monkeypatch.setattr(cl, "compiler_versions", lambda: ("numba-cuda 0.30.4", "NVVM 9.9"))
    assert key(FakeKernel()) != plain
