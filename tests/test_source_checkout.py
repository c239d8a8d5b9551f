"""A source checkout imports in every mode: gpunn installed editable, non-editable, or not at all.

(Editable is this test environment itself, the one every other test runs in.)

Installed, the kernel families are the package ``gpunn.kernels`` (pyproject.toml maps the
top-level ``kernels/`` folder to it).  Run from the repository root, Python finds the
checkout's own ``gpunn/`` first; ``gpunn/kernels/__init__.py`` (in the checkout only) makes
``gpunn.kernels`` that folder.  These tests run Python in subprocesses, from the root and
from elsewhere, beside a non-editable copy of gpunn laid out as its wheel lays it out.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: prepended to every command: this environment's own editable install of gpunn is taken out of
#: the import system, so "not installed" and "installed non-editable" are what they say
FORGET_EDITABLE = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path "
                   "if '__editable__' not in getattr(f, '__module__', '')]")
PROBE = ("import gpunn, gpunn.kernels, gpunn.kernels.launch, gpunn.kernels.batch; "
         "print(gpunn.__file__); print(gpunn.kernels.__path__[0]); print(len(gpunn.kernels.FAMILIES))")


def python(*args, cwd, pythonpath=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["NUMBA_ENABLE_CUDASIM"] = "1"  # importing the kernels needs no GPU
    if pythonpath:
        env["PYTHONPATH"] = str(pythonpath)
    if args[0] == "-c":
        args = ("-c", f"{FORGET_EDITABLE}\n{args[1]}")
    else:  # -m MODULE ARGS: run the module after forgetting the editable install
        args = ("-c", f"{FORGET_EDITABLE}\nimport runpy; sys.argv = {list(args[1:])!r}; "
                      f"runpy.run_module({args[1]!r}, run_name='__main__', alter_sys=True)")
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.splitlines()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """gpunn as a non-editable install lays it out: gpunn/ without the checkout's shim, kernels/ as gpunn/kernels."""
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11's tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "gpunn.kernels" in cfg["packages"] and cfg["package-dir"]["gpunn.kernels"] == "kernels"
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "gpunn", site / "gpunn", ignore=shutil.ignore_patterns("kernels", "__pycache__"))
    shutil.copytree(ROOT / "kernels", site / "gpunn" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def test_from_the_root_the_checkout_and_its_kernels_are_imported(installed):
    for pythonpath in (installed, None):  # beside a non-editable install; not installed at all
        module, kernels, families = python("-c", PROBE, cwd=ROOT, pythonpath=pythonpath)
        assert Path(module) == ROOT / "gpunn" / "__init__.py"
        assert Path(kernels) == ROOT / "kernels" and int(families) > 0


def test_elsewhere_the_installed_package_is_imported(installed, tmp_path):
    module, kernels, _ = python("-c", PROBE, cwd=tmp_path, pythonpath=installed)
    assert Path(module) == installed / "gpunn" / "__init__.py"
    assert Path(kernels) == installed / "gpunn" / "kernels"


def test_the_commands_run_from_the_root(installed):
    assert python("-m", "gpunn", "--version", cwd=ROOT, pythonpath=installed)[0].startswith("gpunn ")
    assert any("usage" in line for line in python("-m", "gpunn.ptx", "--help", cwd=ROOT, pythonpath=installed))
