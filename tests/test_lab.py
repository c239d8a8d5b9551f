"""The kernel lab (gpunn.lab): a user's version validated, compiled, profiled; the plots that compare.

The user files live in tests/versions/ (one deliberately wrong, one that does not import, a
right count_correct) and examples/my_softmax.py (the README tutorial's, right).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gpunn import lab
from gpunn.backend.ops import OPS
from gpunn.bench import KERNELS, BenchResult, ValidationFailed, plot_figure
from gpunn.env import simulator_on

ROOT = Path(__file__).resolve().parent.parent
RIGHT = "examples/my_softmax.py"
WRONG = "tests/versions/wrong_softmax.py"
BROKEN = "tests/versions/broken.py"
COUNT = "tests/versions/count.py"

needs_sim = pytest.mark.skipif(not simulator_on(), reason="the CUDA simulator is off in this run")


def _numba_problem():
    try:
        from gpunn.env import numba_numpy_problem
    except ImportError:
        return None
    return numba_numpy_problem()


def gpunn_process(*args):
    """``gpunn ARGS`` in a fresh Python with the simulator off (what a machine without one sees)."""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "GPUNN_LOAD_HINT": "0"}
    return subprocess.run([sys.executable, "-m", "gpunn", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.fixture
def gpunn(monkeypatch, capsys):
    """``gpunn(*args)`` runs ``gpunn ARGS`` in this process (its simulator, from the checkout's root)
    and returns what a subprocess would: ``returncode``, ``stdout``, ``stderr``. In-process, because
    a fresh Python per case cost CI ~45 s in each of two tiers."""
    from gpunn import cli

    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GPUNN_LOAD_HINT", "0")

    def run(*args):
        capsys.readouterr()
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


# ---------------------------------------------------------------------------- loading a version


def test_a_version_is_loaded_and_held_to_the_ops_arguments():
    pytest.importorskip("numba")
    v = lab.load_version(f"{ROOT / RIGHT}:naive", "softmax")
    assert v.op == "softmax" and v.name == "naive" and callable(v.fn)
    for text, message in ((f"{ROOT / WRONG}:takes_one", "cannot take softmax's 2 arguments (x, out)"),
                          (f"{ROOT / WRONG}:nope", "defines no 'nope'"),
                          (f"{ROOT / BROKEN}:anything", "cannot import it: ImportError: the user's module has a bug"),
                          ("missing.py:f", "missing.py: no such file"),
                          (f"{ROOT / RIGHT}", "expected FILE.py:NAME"),
                          (f"{ROOT / 'README.md'}:f", "a Python file")):
        with pytest.raises(lab.VersionError, match=message.replace("(", r"\(").replace(")", r"\)")):
            lab.load_version(text, "softmax")
    with pytest.raises(lab.VersionError, match="unknown op 'softmaxx'"):
        lab.load_version(f"{ROOT / RIGHT}:naive", "softmaxx")


def test_kernels_are_declared_in_one_way(tmp_path):
    pytest.importorskip("numba")
    specs = lab.declared_kernels(ROOT / RIGHT)
    assert [s.name for s in specs] == ["softmax_naive", "softmax_block"] and all(s.block == 128 for s in specs)
    for body, message in (("def f(x, out): pass\n", "declares no kernels; add"),
                          ("KERNELS = [(print, 'void()', 32)]\n", r"KERNELS\[0\]\[0\] is not a @cuda.jit kernel"),
                          ("KERNELS = [(1, 2)]\n", r"KERNELS\[0\] is not \(kernel, signature, threads per block\)")):
        (tmp_path / "k.py").write_text(body)
        with pytest.raises(lab.VersionError, match=message):
            lab.declared_kernels(tmp_path / "k.py")


# ---------------------------------------------------------------------------- gpunn bench --version, in the simulator


@pytest.mark.cudasim
@needs_sim
def test_bench_validates_right_versions_beside_gpunns_in_the_simulator(tmp_path, gpunn):
    pytest.importorskip("numba")
    r = gpunn("bench", "softmax", "--version", f"{RIGHT}:naive", "--version", f"{RIGHT}:block",
              "--json", tmp_path / "b.json")
    assert r.returncode == 0, r.stderr
    assert "every variant matched the float64 NumPy reference" in r.stdout
    assert f"naive: yours, {RIGHT}:naive" in r.stdout and "tree: gpunn's version (the backend's)" in r.stdout
    d = json.loads((tmp_path / "b.json").read_text())
    assert list(d["variants"]) == ["numpy", *OPS["softmax"].versions, "naive", "block"]
    assert d["variants"]["block"]["kind"] == "user" and d["variants"]["block"]["seconds"] == [None, None]
    assert d["default_version"] == "tree"


@pytest.mark.cudasim
@needs_sim
def test_a_wrong_version_fails_validation_naming_its_file(gpunn):
    pytest.importorskip("numba")
    r = gpunn("bench", "softmax", "--version", f"{RIGHT}:naive", "--version", f"{WRONG}:wrong")
    assert r.returncode == 1 and r.stdout == ""
    first = r.stderr.splitlines()[0]
    assert first.startswith("gpunn bench: validation failed, nothing timed: softmax 5x10: "
                            f"{WRONG}:wrong differs from the float64 reference in "), first
    assert "got" in r.stderr and "expected" in r.stderr


@pytest.mark.parametrize("version, message", [
    (f"{BROKEN}:anything", f"{BROKEN}: cannot import it: ImportError: the user's module has a bug on line 6"),
    (f"{WRONG}:takes_one", f"{WRONG}:takes_one cannot take softmax's 2 arguments (x, out), in that order"),
    (f"{WRONG}:raises", f"{WRONG}:raises raised while validating softmax 5x10: TypeError: "),
    (f"{WRONG}:nope", f"{WRONG}: defines no 'nope'"),
], ids=["does-not-import", "wrong-arity", "kernel-raises", "no-such-name"])
@pytest.mark.cudasim
@needs_sim
def test_a_broken_version_is_one_line_naming_the_file_and_version(version, message, gpunn):
    pytest.importorskip("numba")
    r = gpunn("bench", "softmax", "--version", version)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gpunn bench: error: {message}"), r.stderr


@pytest.mark.cudasim
@needs_sim
def test_the_python_api_validates_and_reports():
    pytest.importorskip("numba")
    res = lab.bench("softmax", [f"{ROOT / RIGHT}:naive"], sizes=[(4, 9)], reps=2, warmup=0)
    assert res.variants[-1] == "naive" and res.kinds["naive"] == "user" and res.values["naive"] == [None]
    with pytest.raises(ValidationFailed, match="wrong_softmax.py:wrong differs"):
        lab.bench("softmax", [f"{ROOT / WRONG}:wrong"], sizes=[(4, 9)], reps=2, warmup=0)


def test_a_version_without_a_cuda_backend_is_refused_in_one_line():
    """Without the simulator: refused in one line where there is no GPU; validated and timed where there is."""
    r = gpunn_process("bench", "softmax", "--version", f"{RIGHT}:naive", "--sizes", "4x9")
    if r.returncode == 0:  # a machine with a GPU: the version ran, timed
        assert f"naive: yours, {RIGHT}:naive" in r.stdout and "valid, not timed" not in r.stdout
        return
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "a version runs on the cuda backend" in r.stderr or "cannot import" in r.stderr


# ---------------------------------------------------------------------------- gpunn kernels FILE.py


@pytest.mark.ptx
@pytest.mark.skipif(_numba_problem() is not None, reason=str(_numba_problem()))
def test_kernels_reports_a_users_kernels(gpunn):
    pytest.importorskip("numba")
    rows = lab.kernels(ROOT / RIGHT, "sm_90")
    assert [r["kernel"] for r in rows] == ["softmax_naive", "softmax_block"]
    naive, block = rows
    assert naive["block"] == 128 and naive["registers"] > 0 and naive["spill_store_bytes"] == 0
    assert block["shared_bytes"] == 128 * 4 and naive["f64_instructions"] == 0
    assert 0 < block["occupancy_percent"] <= 100
    assert lab.kernels(ROOT / WRONG, "sm_90")[0]["f64_instructions"] > 0  # its bare 0.0 is a float64
    r = gpunn("kernels", RIGHT, "--arch", "sm_80")
    assert r.returncode == 0 and "softmax_block" in r.stdout and "sm_80" in r.stdout, r.stderr
    r = gpunn("kernels", BROKEN)
    assert r.returncode == 2 and r.stderr.strip() == (f"gpunn kernels: error: {BROKEN}: cannot import it: "
                                                      "ImportError: the user's module has a bug on line 6")


# ---------------------------------------------------------------------------- gpunn profile --version


@pytest.mark.cudasim
@needs_sim
def test_profile_runs_the_step_with_a_users_version_in_place(tmp_path, gpunn):
    pytest.importorskip("numba")
    # the quadratic cost counts the correct rows with the op count_correct: the user's, here
    r = gpunn("profile", "--backend", "cuda", "--hidden", "16", "--batch-size", "8", "--loss", "mse", "--version",
              f"count-correct={COUNT}:mine", "--json", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "p.json").read_text())
    assert "count_correct: mine" in d["device"]
    assert not any(x["op"] == "count_correct" for x in d["launches"])  # the user's launches are its own
    assert any(row["op"] == "count_correct" for row in d["ops"])  # but the op ran, and was timed as an op
    r = gpunn("profile", "--backend", "cuda", "--hidden", "16", "--batch-size", "8", "--version",
              "softmax-cross-entropy=classifier", "--json", tmp_path / "p.json")
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "p.json").read_text())
    assert "softmax_cross_entropy: classifier" in d["device"]
    kernels = [(x["op"], x["kernel"]) for x in d["launches"] if x["op"] == "softmax_cross_entropy"]
    assert kernels == [("softmax_cross_entropy", "classifier"), ("softmax_cross_entropy", "finish_loss_colsum")]
    r = gpunn("profile", "--backend", "numpy", "--version", "softmax=online")
    assert r.returncode == 2 and "the numpy backend has one implementation of each op" in r.stderr


@pytest.mark.cudasim
@needs_sim
def test_a_users_version_trains_like_gpunns(new_backend):
    """The step with the user's count_correct gives the same count as gpunn's, through use_version."""
    pytest.importorskip("numba")
    mine = lab.load_version(f"{ROOT / COUNT}:mine", "count_correct")
    rng = np.random.default_rng(0)
    scores, labels = rng.standard_normal((37, 10)).astype(np.float32), rng.integers(0, 10, 37).astype(np.int32)
    counts = []
    for version in (None, mine.fn):
        be = new_backend("cuda-sim")
        if version:
            be.use_version("count_correct", version)
        out = np.zeros(1, np.int32)
        be.count_correct(scores, labels, out)
        counts.append(int(out[0]))
    assert counts[0] == counts[1] == int((scores.argmax(axis=1) == labels).sum())


# ---------------------------------------------------------------------------- the plot


def test_the_plot_draws_every_version_and_the_peak_and_marks_readings_above_it():
    pytest.importorskip("matplotlib")
    res = BenchResult("softmax", "GB/s", [(4096, 10), (4096, 128)], ["numpy", "tree", "online", "mine"],
                      {v: [1e-3, 1e-3] for v in ("numpy", "tree", "online")} | {"mine": [None, 1e-3]},
                      {"numpy": [1.0, 2.0], "tree": [100.0, 3000.0], "online": [120.0, 5200.0], "mine": [None, 50.0]},
                      {"numpy": "numpy (CPU)", "tree": "cuda (NVIDIA H200, compute capability 9.0)",
                       "online": "cuda (NVIDIA H200, compute capability 9.0)", "mine": "cuda (NVIDIA H200)"},
                      4800.0, "NVIDIA H200: spec sheet", "",
                      {"numpy": "reference", "tree": "gpunn", "online": "gpunn", "mine": "user"},
                      {"mine": "mine.py:mine"}, "tree", cpu_threads=2)
    fig = plot_figure(res)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"numpy", "tree (gpunn's default)", "online", "mine", "peak 4,800 GB/s",
            "above the peak: calibration problem"} == set(lines)
    online = lines["online"].get_ydata()
    assert online[0] == 120.0 and np.isnan(online[1])  # 5200 > 4800: not drawn as a result...
    assert list(lines["above the peak: calibration problem"].get_xdata()) == [1]  # ...but marked
    assert set(lines["peak 4,800 GB/s"].get_ydata()) == {4800.0}
    title = ax.get_title()
    assert "NVIDIA H200" in title and "float32" in title and "2 CPU threads" in title
    assert ax.get_ylabel() == "GB/s" and [t.get_text() for t in ax.get_xticklabels()] == ["4096x10", "4096x128"]
    assert res.as_dict()["variants"]["online"]["above_peak"] == ["4096x128"]


# ---------------------------------------------------------------------------- the records name the versions


def test_each_records_versions_are_its_familys():
    pytest.importorskip("numba")
    from gpunn.backend.cuda_backend import kernel_versions

    for name, record in OPS.items():
        assert tuple(kernel_versions(name)) == record.versions, name
        if record.versions:
            assert record.version in record.versions
            assert all(v.summary and len(v.summary) < 120 for v in kernel_versions(name).values())
    assert {n for n, r in OPS.items() if r.versions} >= {"softmax", "gemm", "softmax_cross_entropy"}
    assert set(KERNELS) >= {OPS[n].word for n, r in OPS.items() if r.versions}  # each has a benchmark
