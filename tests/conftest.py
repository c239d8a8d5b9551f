"""Test tiers and the backends every conformance test runs on.

Tiers (markers declared in pyproject.toml):

* ``cudasim``: the cuda backend's kernels in Numba's CUDA simulator (no GPU needed);
* ``ptx``: every kernel compiled to PTX for sm_70/80/90 and checked with ptxas (no GPU);
* ``gpu``: the same conformance tests on a real NVIDIA GPU, plus the no-sync check.

``pytest`` runs all three; the gpu tier then skips itself with its reason.  The
simulator has to be chosen before Numba is imported, so this file turns it on
(``NUMBA_ENABLE_CUDASIM=1``) in ``pytest_configure`` unless the run selects the gpu
tier (``pytest -m gpu``) or ``GPUNN_CUDASIM=0`` is set.

The ``backend`` fixture gives each test every backend: ``numpy`` (the reference),
``cuda-sim`` (the cuda backend in the simulator, with the tiled GEMM, 32-thread
blocks and at most 8 blocks per grid, so grid-stride and block-stride loops run and
the simulator stays quick) and ``cuda`` (a real GPU, default options).  The ``versioned``
fixture gives the two kernel backends with an op run as one of its kernel versions.
"""
from __future__ import annotations

import os
import sys

import pytest

# gpunn.env imports no Numba, so importing it here leaves pytest_configure free to choose the simulator.
from gpunn.env import simulator_on  # noqa: F401 (the tests import it from here too)

GPU_SKIP_REASON = "no NVIDIA GPU with CuPy on this machine"


def _gpu_tier_selected(config) -> bool:
    expr = (config.getoption("markexpr", "") or "").replace("not gpu", "")
    return "gpu" in expr


def pytest_configure(config):
    if os.environ.get("GPUNN_CUDASIM") == "0" or _gpu_tier_selected(config):
        if "numba" not in sys.modules:
            os.environ["NUMBA_ENABLE_CUDASIM"] = "0"
    else:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
        # The simulator runs each CUDA thread as a Python thread and polls them at every
        # cuda.syncthreads(); a short GIL switch interval makes those barriers ~5x faster.
        sys.setswitchinterval(1e-4)


def gpu_unavailable_reason() -> str | None:
    """None when the real-GPU backend can run in this test process, else why not."""
    try:
        import cupy

        count = cupy.cuda.runtime.getDeviceCount()
    except ImportError:
        return f"{GPU_SKIP_REASON} (CuPy is not installed)"
    except Exception as exc:  # no driver, no device
        return f"{GPU_SKIP_REASON} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if count < 1:
        return GPU_SKIP_REASON
    if simulator_on():
        return "the CUDA simulator is on in this run; run the real-GPU tier with: pytest -m gpu"
    from gpunn.backend.cuda_backend import cuda_unavailable_reason

    reason = cuda_unavailable_reason()
    return None if reason is None else f"{GPU_SKIP_REASON} ({reason})"


#: Options of the simulated backend in the conformance tests (see the module docstring).
SIM_OPTIONS = {"gemm": "numba", "threads": 32, "max_blocks": 8}


def make_backend(name: str, **options):
    """A fresh backend by test name: "numpy", "cuda-sim" or "cuda" (numpy ignores ``options``).

    "numpy" is the registry's numpy backend (with its Numba-fused loops when Numba is
    installed), so the conformance tests compare it, too, with the pure reference."""
    if name == "numpy":
        from gpunn.backend import get_backend

        return get_backend("numpy")
    from gpunn.backend.cuda_backend import CudaBackend

    if name == "cuda-sim":
        assert simulator_on(), "cuda-sim needs NUMBA_ENABLE_CUDASIM=1 before numba is imported"
        return CudaBackend(**{**SIM_OPTIONS, **options})
    if name == "cuda":
        return CudaBackend(**options)
    raise ValueError(f"unknown test backend {name!r}")


def backend_params():
    """``pytest.param`` for every backend, marked with its tier; the gpu one skips with its reason."""
    gpu_reason = gpu_unavailable_reason()
    return [
        pytest.param("numpy", id="numpy"),
        pytest.param("cuda-sim", id="cuda-sim", marks=[
            pytest.mark.cudasim,
            pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run "
                                                           "(GPUNN_CUDASIM=0 or pytest -m gpu)"),
        ]),
        pytest.param("cuda", id="cuda", marks=[
            pytest.mark.gpu,
            pytest.mark.skipif(gpu_reason is not None, reason=gpu_reason or ""),
        ]),
    ]


def kernel_backend_params():
    """``backend_params`` less numpy: the backends that run gpunn's kernels (and so their versions)."""
    return [p for p in backend_params() if p.id != "numpy"]


def backend_names():
    """Names of the backends that can run in this process."""
    names = ["numpy"]
    if simulator_on():
        names.append("cuda-sim")
    elif gpu_unavailable_reason() is None:
        names.append("cuda")
    return names


def pytest_generate_tests(metafunc):
    # Computed here, after pytest_configure, so the simulator decision is already made.
    if "backend_name" in metafunc.fixturenames:
        metafunc.parametrize("backend_name", backend_params())
    if "kernel_backend_name" in metafunc.fixturenames:
        metafunc.parametrize("kernel_backend_name", kernel_backend_params())


@pytest.fixture
def backend(backend_name):
    """Each backend in turn (see ``backend_params``)."""
    return make_backend(backend_name)


@pytest.fixture
def backend_with(backend_name):
    """``backend_with(**options)``: each backend in turn, built with the cuda backend's options."""
    return lambda **options: make_backend(backend_name, **options)


@pytest.fixture
def versioned(kernel_backend_name):
    """``versioned(op, version)``: each kernel backend in turn (cuda-sim, cuda), running ``op`` as that
    kernel version (the conformance suite's way of holding every version to the reference)."""
    return lambda op, version: make_backend(kernel_backend_name, versions={op: version})


@pytest.fixture
def new_backend():
    """``make_backend`` itself, for tests that build a backend with their own options."""
    return make_backend


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST (tests/mnist_data.py says where it is looked for; mark users ``needs_mnist``)."""
    from gpunn.data import load_mnist
    from mnist_data import mnist_dir

    return load_mnist(mnist_dir(), download=False, progress=False)


def _can_make_device_nodes() -> bool:
    """True when this process may create a character device (root, or CAP_MKNOD): probed once."""
    import stat
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        try:
            os.mknod(os.path.join(folder, "probe"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        except (OSError, AttributeError):  # PermissionError; no os.mknod on this platform
            return False
    return True


#: for tests that make fake device nodes (a /dev/null or /dev/full of their own, in a temp folder)
needs_mknod = pytest.mark.skipif(not _can_make_device_nodes(), reason="making a device node needs root (CAP_MKNOD)")


def char_device(path, minor):
    """A character device at ``path`` with the numbers of /dev/null (minor 3), /dev/zero (5) or /dev/full (7)."""
    import stat

    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    return path


def within(seconds, call):
    """``call()``'s result, failing the test (not hanging it) when it takes more than ``seconds``;
    what it raised is raised here."""
    import threading

    out = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        pytest.fail(f"still running after {seconds} s: it hangs")
    if "error" in out:
        raise out["error"]
    return out["value"]


def pytest_terminal_summary(terminalreporter):
    """Every skip's reason, one line per reason with its count (``-r`` lists one line per test
    location: dozens of lines that pushed a failure's traceback out of CI's last screen)."""
    from collections import Counter

    reasons = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    if reasons:
        terminalreporter.section("skipped, by reason", sep="-")
        for reason, count in reasons.most_common():
            terminalreporter.write_line(f"{count:5d}  {reason}")
