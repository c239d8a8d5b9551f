"""The examples run as a user would run them, on real MNIST."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_data import mnist_dir, needs_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
QUIET = {**os.environ, "GPUNN_LOAD_HINT": "0"}  # no line about a busy machine in the checks of stderr


def run_example(name, tmp_path, *args):
    metrics = tmp_path / "m.json"
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--data-dir", str(mnist_dir()), "--backend", "numpy",
                        "--metrics-json", str(metrics), *args], capture_output=True, text=True, timeout=600, env=QUIET)
    assert r.returncode == 0, r.stderr
    return json.loads(metrics.read_text())


@pytest.mark.slow
@needs_mnist
def test_seed_network_reaches_95_percent(tmp_path):
    """The primer's 784-16-16-10 sigmoid/MSE network, batches of 100, its full 30 epochs."""
    m = run_example("seed_network.py", tmp_path)
    assert m["test_accuracy"] >= 0.95
    assert len(m["epochs"]) == 30 and m["config"]["batch_size"] == 100


@pytest.mark.slow
@needs_mnist
def test_api_example_trains(tmp_path):
    m = run_example("train_mnist.py", tmp_path, "--epochs", "1")
    assert m["test_accuracy"] > 0.9 and m["backend"] == "numpy"


@pytest.mark.parametrize("name", ["seed_network.py", "train_mnist.py"])
def test_examples_report_bad_input_in_one_line(tmp_path, name):
    """Examples are programs users run: no data is the CLI's one line and exit status 2, no traceback."""
    r = subprocess.run([sys.executable, str(EXAMPLES / name), "--data-dir", str(tmp_path / "none"), "--backend", "numpy"],
                       capture_output=True, text=True, timeout=120, env=QUIET)
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"{name}: error: {tmp_path / 'none'}: no such folder\n"


BUSY = """
import os, runpy, sys
os.getloadavg = lambda: (os.cpu_count() + 3.0, 0.0, 0.0)   # a machine busier than its cores
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("name", ["seed_network.py", "train_mnist.py"])
def test_examples_take_threads_and_say_when_the_machine_is_busy(tmp_path, name):
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_LOAD_HINT"}
    run = [sys.executable, "-c", BUSY, str(EXAMPLES / name), "--data-dir", str(tmp_path / "none"), "--backend", "numpy"]
    r = subprocess.run(run, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r.stderr
    hint, error = r.stderr.splitlines()
    assert hint.startswith("gpunn: the machine is busy (load average") and "--threads 1" in hint, hint
    assert error == f"{name}: error: {tmp_path / 'none'}: no such folder"
    r = subprocess.run([*run, "--threads", "1"], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and r.stderr == f"{error}\n", r.stderr


def test_the_readmes_api_example_is_examples_api_tour():
    code = (EXAMPLES / "api_tour.py").read_text()
    body = code[code.index('"""\n', 3) + 4:]
    readme = (EXAMPLES.parent / "README.md").read_text()
    assert f"## The Python API\n\n```python\n{body}```\n" in readme


@pytest.mark.slow
@needs_mnist
def test_api_tour_trains_saves_loads_and_predicts(tmp_path):
    r = subprocess.run([sys.executable, str(EXAMPLES / "api_tour.py")], capture_output=True, text=True, timeout=600,
                       cwd=tmp_path, env={**QUIET, "GPUNN_DATA_DIR": str(mnist_dir()), "GPUNN_BACKEND": "numpy"})
    assert r.returncode == 0, r.stderr
    accuracy, predicted = r.stdout.splitlines()
    assert float(accuracy.split()[-1]) > 0.93  # 0.9484 on the numpy backend
    assert predicted.startswith("predicted [") and (tmp_path / "mnist-mlp.npz").is_file()
