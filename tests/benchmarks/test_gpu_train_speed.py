"""The GPU benchmark script runs end to end on the CPU, degraded (numpy backend, tiny random data).

Nothing is timed here: the script is meant for a GPU, where it runs once; these runs check that
it parses its options, trains, writes the JSON schema, reports what could not run instead of
stopping, and prints its tables (with the targets) at the end of its output.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mnist_data import mnist_dir, needs_mnist

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_train_speed.py"
CONTESTANTS = ("gpunn", "gpunn_eager", "gpunn_fused", "gpunn_own_gemm", "gpunn_tf32", "torch_eager",
               "torch_graph")


def run(*args, env=None):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_cpu_smoke_run_writes_the_schema(tmp_path):
    path = tmp_path / "out.json"
    out = run("--backend", "numpy", "--only", "gpunn,gpunn_eager", "--epochs", "2", "--net", "small",
              "--synthetic", "1000", "--skip-startup", "--skip-launch", "--json", str(path))
    r = json.loads(path.read_text())
    assert {"device", "date", "command", "nets", "launch_us", "replay_us", "startup_s", "notes"} <= r.keys()
    assert r["replay_us"] == {"replays": 200, "error": "the numpy backend has no CUDA graphs"}  # said, not timed
    assert "replay_us: µs per replay" in out and "not measured: the numpy backend has no CUDA graphs" in out
    assert isinstance(r["device"], str) and r["device"] and "gpu_train_speed.py" in r["command"]
    assert r["date"][:4].isdigit() and r["date"][4] == "-"
    assert list(r["nets"]) == ["small"]
    small = r["nets"]["small"]
    assert {"seconds_per_epoch", "epoch_seconds", "test_accuracy", "config"} <= small.keys()
    assert set(small["seconds_per_epoch"]) == set(CONTESTANTS)   # every key; null where not run
    for c in ("gpunn", "gpunn_eager"):
        assert small["seconds_per_epoch"][c] > 0
        assert len(small["epoch_seconds"][c]) == 2 and all(t > 0 for t in small["epoch_seconds"][c])
        assert 0 <= small["test_accuracy"][c] <= 1
    # the same model, data and batch order: graphs or not, the numpy backend trains identically
    assert small["test_accuracy"]["gpunn"] == small["test_accuracy"]["gpunn_eager"]
    assert small["seconds_per_epoch"]["torch_eager"] is None and small["seconds_per_epoch"]["torch_graph"] is None
    assert any("torch_eager" in n for n in r["notes"])
    # the kernels one step launches on the cuda path (planned: numpy runs the cuda backend's plans dry)
    # the gather (with the advance), 3 x (GEMM, bias_act), count + mse + its reduction, 3 act_bias_backward + 5 GEMMs,
    # the update
    assert small["kernels_per_step"] == {"gpunn": 19, "gpunn_eager": 19}
    assert "kernels/step" in out and small["seconds_per_epoch"]["gpunn_fused"] is None
    cfg = small["config"]
    assert cfg["hidden"] == [16, 16] and cfg["loss"] == "mse" and cfg["lr"] == 6.0 and cfg["batch_size"] == 100
    assert r["launch_us"] is None and r["startup_s"] is None
    # the tables and the targets close the output
    tail = out[out.index("RESULTS"):]
    assert "784-16-16-10 sigmoid" in tail and "gpunn_eager" in tail and "warm-up" in tail
    assert "small: gpunn s/epoch" in tail and ("met" in tail or "missed" in tail)
    assert out.rstrip().splitlines()[-1].lstrip().startswith("second run")


def test_failures_are_reported_in_their_rows_and_the_rest_runs(tmp_path):
    """--backend cuda with CuPy and PyTorch hidden (as on a machine without them): every row says
    why; the launch and start-up sections fail too; the script still ends with its tables, exit 0."""
    hidden = tmp_path / "hidden"
    for name in ("cupy", "torch"):
        (hidden / name).mkdir(parents=True)
        (hidden / name / "__init__.py").write_text(f'raise ImportError("No module named {name!r} (hidden by the test)")\n')
    path = tmp_path / "out.json"
    out = run("--backend", "cuda", "--epochs", "1", "--net", "big", "--synthetic", "300",
              "--startup-timeout", "60", "--json", str(path),
              env={"PYTHONPATH": os.pathsep.join(filter(None, [str(hidden), os.environ.get("PYTHONPATH")])),
                   "NUMBA_ENABLE_CUDASIM": "0"})   # not the simulator the test suite turns on
    r = json.loads(path.read_text())
    big = r["nets"]["big"]
    assert set(big["seconds_per_epoch"]) == set(CONTESTANTS)
    for c in CONTESTANTS:
        assert big["seconds_per_epoch"][c] is None and big["test_accuracy"][c] is None
        assert c in big["errors"] and any(n.startswith(f"big/{c}:") for n in r["notes"])
    assert "cupy" in big["errors"]["gpunn"].lower() and "PyTorch is not installed" in big["errors"]["torch_graph"]
    assert r["launch_us"] is None and any(n.startswith("launch_us: not measured") for n in r["notes"])
    runs = r["startup_s"]["runs"]
    assert len(runs) == 2 and all(run["seconds_to_first_step"] is None and run["error"] for run in runs)
    tail = out[out.index("RESULTS"):]
    assert "ERROR: BackendUnavailable" in tail and "PyTorch is not installed" in tail
    assert "big: gpunn / torch_graph" in tail and "not measured" in tail


@needs_mnist
def test_launch_and_startup_sections_on_the_cpu(tmp_path):
    """The two small sections measure on the numpy backend too: µs per call, and the start-up of
    two `python -m gpunn train` runs read from the metrics JSON each writes."""
    path = tmp_path / "out.json"
    out = run("--backend", "numpy", "--only", "gpunn", "--net", "small", "--epochs", "1",
              "--train-samples", "500", "--data", str(mnist_dir()), "--json", str(path))
    r = json.loads(path.read_text())
    launch = r["launch_us"]
    assert all(launch[k] > 0 for k in ("_bias_act", "bias_act", "_sgd_update"))
    startup = r["startup_s"]
    assert startup["first"] > 0 and startup["second"] > 0 and len(startup["runs"]) == 2
    assert all(run["returncode"] == 0 and "--metrics-json" in run["command"] for run in startup["runs"])
    assert r["nets"]["small"]["seconds_per_epoch"]["gpunn"] > 0
    met = {t["what"]: t for t in r["targets"]}
    assert met["second run: first step after start"]["measured"] == startup["second"]
    assert "launch_us" in out[out.index("RESULTS"):] and "_sgd_update" in out[out.index("RESULTS"):]


@pytest.mark.parametrize("bad", [["--epochs", "0"], ["--only", "jax"], ["--net", "huge"]])
def test_bad_arguments_are_usage_errors(bad):
    proc = subprocess.run([sys.executable, str(SCRIPT), *bad], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error" in proc.stderr
