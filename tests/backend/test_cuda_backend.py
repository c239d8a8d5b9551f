"""The cuda backend's glue: how it is chosen, built and refused, in the simulator and without it."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gpunn.backend import get_backend
from gpunn.errors import BackendUnavailable

from conftest import simulator_on

pytestmark = pytest.mark.cudasim
#: for the tests about the simulated backend itself
needs_simulator = pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run "
                                                                "(GPUNN_CUDASIM=0 or pytest -m gpu)")


@needs_simulator
def test_get_backend_cuda_builds_the_simulated_backend():
    from gpunn.backend.cuda_backend import CudaBackend
    from gpunn.env import simulator_on as simulator_enabled

    assert simulator_enabled()
    be = get_backend("cuda")
    assert isinstance(be, CudaBackend) and be.simulated and be.xp.__name__ == "numpy"
    assert be.describe() == "cuda (Numba CUDA simulator, NumPy arrays; GEMM: numpy matmul)"
    assert "GEMM: gpunn blocked" in get_backend("cuda", gemm="numba").describe()


@needs_simulator
def test_auto_never_picks_the_simulator(capsys):
    from gpunn.backend import _announced

    _announced.clear()
    assert get_backend("auto").name == "numpy"
    get_backend("auto")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpunn: using the numpy backend (NUMBA_ENABLE_CUDASIM=1 is set, and auto does not pick the "
                   "CUDA simulator)"]  # said once, with the reason


@pytest.mark.parametrize("options, message", [({"gemm": "cutlass"}, "gemm must be one of cublas, numba"),
                                              ({"threads": 48}, "power of two")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        get_backend("cuda", **options)


PROBE = """
import json
from gpunn.backend import get_backend
from gpunn.backend.cuda_backend import cuda_unavailable_reason
try:
    be = get_backend("cuda")
    print(json.dumps({"reason": cuda_unavailable_reason(), "describe": be.describe()}))
except Exception as exc:
    print(json.dumps({"reason": cuda_unavailable_reason(), "error": type(exc).__name__, "message": str(exc)}))
"""


def test_without_the_simulator_cuda_needs_a_real_gpu():
    """Simulator off: a machine without a GPU gets one clear line; one with a GPU gets the GPU."""
    env = {"NUMBA_ENABLE_CUDASIM": "0", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True)
    result = json.loads(proc.stdout)
    if result["reason"] is None:
        assert "describe" in result and "simulator" not in result["describe"]
    else:
        assert result["error"] == BackendUnavailable.__name__
        assert result["message"].startswith("the cuda backend needs an NVIDIA GPU")
        assert result["reason"] in result["message"] and "\n" not in result["message"]


# ---------------------------------------------------------------------------- the bound-launch cache's key
class _DeviceArray:
    def __init__(self, ptr, shape=(4, 3)):
        self.data = type("Memory", (), {"ptr": ptr})()
        self.shape, self.strides = shape, (12, 4)


def test_the_launch_key_holds_every_argument_of_the_call():
    from gpunn.backend.cuda_backend import call_key

    x, y = _DeviceArray(0x1000), _DeviceArray(0x2000)
    base = call_key("sgd_update", (x, y, None, 0.1, 0.9, 0.0, True))
    assert call_key("sgd_update", (x, y, None, 0.1, 0.9, 0.0, True)) == base
    for changed in [(y, y, None, 0.1, 0.9, 0.0, True), (x, y, x, 0.1, 0.9, 0.0, True),
                    (x, y, None, 0.2, 0.9, 0.0, True), (x, y, None, 0.1, 0.8, 0.0, True),
                    (x, y, None, 0.1, 0.9, 1e-4, True), (x, y, None, 0.1, 0.9, 0.0, False),
                    (_DeviceArray(0x1000, (3, 4)), y, None, 0.1, 0.9, 0.0, True)]:
        assert call_key("sgd_update", changed) != base, changed


def test_every_op_queues_with_all_of_its_arguments():
    """The key is derived from what ``_queue`` is given: each op method must hand it every one of its
    parameters (a scalar left out would replay a launch bound for another value, silently)."""
    import ast
    import inspect

    from gpunn.backend import cuda_backend

    tree = ast.parse(inspect.getsource(cuda_backend.CudaBackend))
    checked = 0
    for method in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        params = [a.arg for a in method.args.args[1:]]
        for call in (n for n in ast.walk(method) if isinstance(n, ast.Call)):
            if (isinstance(call.func, ast.Attribute) and call.func.attr in ("_queue", "_versioned")
                    and method.name not in ("_queue", "_versioned")):
                given = [e.id for e in call.args[1].elts]
                assert given == params, f"{method.name} queues {given}, its parameters are {params}"
                checked += 1
    assert checked >= 13  # every op but the cuBLAS GEMM queues kernels
