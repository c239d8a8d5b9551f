"""gpunn.env: what the process's environment allows, said in one line where it falls short."""
from __future__ import annotations

import subprocess
import sys

import numpy
import pytest

from gpunn import env


@pytest.mark.parametrize("version, broken", [("2.4.6", False), ("1.26.4", False), ("2.5.0", True),
                                             ("2.5.0rc1", True), ("2.10.1", True), ("3.0.0.dev0", True)])
def test_numba_numpy_problem_by_version(version, broken):
    line = env.numba_numpy_problem(version)
    assert (line is not None) == broken
    if broken:
        assert "\n" not in line and version in line and 'pip install "numpy<2.5"' in line


def test_this_environment_is_not_the_broken_pair():
    # The extras that bring numba-cuda keep NumPy below 2.5, so the test environment never has both.
    assert env.numba_numpy_problem() is None, numpy.__version__


_PRETEND = """
import numpy, sys
numpy.__version__ = "2.5.1"  # what pip resolves on Python >= 3.12 without gpunn's pin
from gpunn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("argv", [
    ["kernels"],  # compile_ptx would fail with an AttributeError
    ["train", "--backend", "cuda", "--epochs", "1"],  # the cuda backend, before any GPU question
    ["bench", "softmax", "--variants", "ours", "--sizes", "8x8"],  # gpunn's kernels are not available
])
def test_the_cli_names_numpy_2_5_in_one_line(argv, tmp_path):
    pytest.importorskip("numba")
    environ = {"PATH": "/usr/bin:/bin", "GPUNN_CACHE_DIR": str(tmp_path), "NUMBA_ENABLE_CUDASIM": "0",
               "GPUNN_LOAD_HINT": "0", "PYTHONPATH": ":".join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", _PRETEND, *argv], capture_output=True, text=True,
                          env=environ, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "NumPy 2.5.1" in lines[0] and 'pip install "numpy<2.5"' in lines[0], proc.stderr

