"""The command line: exit codes, one-line errors, JSON written, Ctrl-C saves and resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_data import mnist_dir, needs_mnist

QUICK = ["--train-samples", "3000", "--test-samples", "500", "--hidden", "32", "--epochs", "1", "--backend", "numpy"]


def gpunn(*args, env=None, timeout=300):
    e = {**os.environ, "GPUNN_DATA_DIR": str(mnist_dir()), **(env or {})}
    return subprocess.run([sys.executable, "-m", "gpunn", *map(str, args)], capture_output=True, text=True,
                          env=e, timeout=timeout)




@needs_mnist
def test_train_writes_metrics_and_checkpoint_then_eval(tmp_path):
    metrics, ck = tmp_path / "m.json", tmp_path / "ck.npz"
    r = gpunn("train", *QUICK, "--epochs", "2", "--metrics-json", metrics, "--save", ck)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout and "epoch 2/2" in r.stdout
    m = json.loads(metrics.read_text())
    assert 0.8 < m["test_accuracy"] <= 1 and m["backend"] == "numpy" and m["train_seconds"] > 0
    assert [e["epoch"] for e in m["epochs"]] == [1, 2]
    for e in m["epochs"]:
        assert e["loss"] > 0 and e["seconds"] > 0 and e["samples_per_second"] > 0 and 0 <= e["test_accuracy"] <= 1
    r = gpunn("eval", ck, "--test-samples", "500", "--backend", "numpy")
    assert r.returncode == 0, r.stderr
    assert f"test accuracy {100 * m['test_accuracy']:.2f}%" in r.stdout


@needs_mnist
def test_seed_network_from_the_cli(tmp_path):
    r = gpunn("train", "--hidden", "16,16", "--activation", "sigmoid", "--loss", "mse", "--batch-size", "100",
              "--lr", "3", "--momentum", "0", "--no-nesterov", "--lr-schedule", "constant", "--epochs", "1",
              "--train-samples", "5000", "--test-samples", "500", "--backend", "numpy", "--metrics-json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    cfg = json.loads((tmp_path / "m.json").read_text())["config"]
    assert cfg["output_activation"] == "sigmoid" and cfg["loss"] == "mse" and cfg["hidden"] == [16, 16]


def test_console_script_and_module_agree():
    script = Path(sys.executable).with_name("gpunn")     # installed beside this interpreter
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    b = gpunn("--version")
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout and "gpunn" in a.stdout


@pytest.mark.parametrize("args,needle", [
    (["--hidden", "512,abc"], "entry 2 ('abc') is not an integer"),
    (["--hidden", "512,,10"], "entry 2 ('') is not an integer"),
    (["--hidden", "0"], "must be a positive size"),
    (["--batch-size", "0"], "positive integer"),
    (["--epochs", "-1"], "positive integer"),
    (["--lr", "0"], "positive"),
    (["--lr", "nan"], "positive finite"),
    (["--lr", "-0.1"], "positive"),
    (["--activation", "gelu"], "invalid choice: 'gelu'"),
    (["--loss", "hinge"], "invalid choice: 'hinge'"),
    (["--lr-schedule", "warm"], "invalid choice: 'warm'"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--loss", "cross-entropy", "--output-activation", "sigmoid"], "logits"),
    (["--resume", "/nonexistent/ck.npz"], "no such checkpoint"),
    (["--seed", "-1"], "expected an integer >= 0"),
    (["--metrics-json", "/nonexistent/m.json"], "folder /nonexistent does not exist"),   # before training
    (["--save", "/"], "/ is a folder"),
])
def test_bad_options_give_one_line_and_exit_2(args, needle):
    r = gpunn("train", "--backend", "numpy", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_cuda_backend_without_a_gpu_is_one_clear_line():
    r = gpunn("train", "--backend", "cuda", "--epochs", "1", env={"NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "cuda" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_eval_rejects_a_file_that_is_not_a_checkpoint(tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("hello")
    r = gpunn("eval", bad)
    assert r.returncode == 2 and "not a gpunn checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@needs_mnist
def test_ctrl_c_saves_and_resume_finishes(tmp_path):
    ck = tmp_path / "ck.npz"
    env = {**os.environ, "GPUNN_DATA_DIR": str(mnist_dir()), "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "gpunn", "train", "--backend", "numpy", "--train-samples", "20000",
                          "--test-samples", "200", "--hidden", "64", "--epochs", "50", "--batch-size", "32", "--save", str(ck)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and p.poll() is None:   # first epoch saved
        time.sleep(0.1)
    time.sleep(0.3)                                                            # well inside epoch 2
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Resume with: gpunn train --resume" in err and "Traceback" not in err
    from gpunn import checkpoint
    meta = checkpoint.load(ck)[0]
    assert meta["epoch"] >= 1 and meta["step"] > 0          # saved mid-epoch, at the current step
    r = gpunn("train", "--resume", ck, "--epochs", str(meta["epoch"] + 1), "--backend", "numpy",
              "--train-samples", "20000", "--test-samples", "200")
    assert r.returncode == 0, r.stderr
    assert checkpoint.load(ck)[0]["epoch"] == meta["epoch"] + 1
    r = gpunn("train", "--resume", ck, "--lr", "0.5")
    assert r.returncode == 2 and "only --epochs may change" in r.stderr


def test_data_problems_are_one_line_errors(tmp_path):
    from test_data import fake_mnist, write_mnist

    small = write_mnist(tmp_path / "small", fake_mnist(rows=4, cols=3))
    ck = tmp_path / "ck.npz"
    r = gpunn("train", "--data-dir", small, "--hidden", "8", "--epochs", "1", "--backend", "numpy", "--save", ck)
    assert r.returncode == 0, r.stderr
    other = write_mnist(tmp_path / "other", fake_mnist(rows=5, cols=5))
    for cmd in (["eval", ck], ["train", "--resume", ck, "--epochs", "2"]):
        r = gpunn(*cmd, "--data-dir", other, "--backend", "numpy")
        assert r.returncode == 2 and "25 pixels" in r.stderr and "12" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    bad = write_mnist(tmp_path / "bad", fake_mnist(labels=12))
    r = gpunn("train", "--data-dir", bad, "--epochs", "1", "--backend", "numpy")
    assert r.returncode == 2 and "label" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@needs_mnist
def test_divergence_is_one_clear_line_and_exit_1(tmp_path):
    r = gpunn("train", "--backend", "numpy", "--train-samples", "2000", "--test-samples", "200", "--lr", "1e8")
    assert r.returncode == 1, r.stderr
    errors = [l for l in r.stderr.splitlines() if "error" in l.lower() or "warning" in l.lower()]
    assert len(errors) == 1 and "loss became nan at epoch 1" in errors[0] and "--lr" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args,needle", [
    (["kernels", "--arch", ","], "names no architecture"),
    (["bench", "softmax", "--sizes", ","], "names no size"),
    (["profile", "--backend", "numpy", "--json", "/nonexistent/p.json"], "folder /nonexistent does not exist"),
])
def test_profiling_commands_refuse_empty_lists_and_unwritable_outputs(args, needle):
    r = gpunn(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def fake_data(tmp_path):
    from test_data import fake_mnist, write_mnist

    return write_mnist(tmp_path / "data", fake_mnist(rows=4, cols=3))


def outputs_of_every_command(data, ck, out):
    """Every command line that writes a file, each writing every output it has to ``out``."""
    fast = ["--backend", "numpy", "--peak-gflops", "1", "--peak-gbs", "1"]
    return [
        ["train", "--data-dir", data, "--hidden", "8", "--epochs", "1", "--backend", "numpy",
         "--save", out, "--metrics-json", out],
        ["eval", ck, "--data-dir", data, "--backend", "numpy", "--metrics-json", out],
        ["bench", "softmax", "--sizes", "4x10", "--reps", "1", "--warmup", "0", "--peak-gflops", "1",
         "--peak-gbs", "1", "--json", out],
        ["kernels", "--arch", "sm_90", "--json", out],
        ["profile", *fast, "--hidden", "8", "--batch-size", "8", "--reps", "1", "--warmup", "0",
         "--json", out, "--csv", out, "--trace", out],
    ]


def test_no_command_replaces_a_device_it_writes_to(tmp_path):
    """``--save /dev/null`` once replaced the machine's /dev/null with a 0600 regular file."""
    import stat

    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    before = os.lstat(null)
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, "--hidden", "8", "--epochs", "1", "--backend", "numpy",
                 "--save", ck).returncode == 0
    for cmd in outputs_of_every_command(data, ck, null):
        r = gpunn(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        st = os.lstat(null)
        assert stat.S_ISCHR(st.st_mode) and (st.st_ino, st.st_mode, st.st_rdev) == \
            (before.st_ino, before.st_mode, before.st_rdev), cmd
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "data", "null"]


def test_every_command_writes_through_a_symlink(tmp_path):
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, "--hidden", "8", "--epochs", "1", "--backend", "numpy",
                 "--save", ck).returncode == 0
    (tmp_path / "real").write_text("")
    link = tmp_path / "latest"
    link.symlink_to("real")
    for cmd in outputs_of_every_command(data, ck, link):
        (tmp_path / "real").write_text("")
        r = gpunn(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        assert link.is_symlink() and os.readlink(link) == "real", cmd
        assert (tmp_path / "real").stat().st_size > 0, cmd
