"""The command line: exit codes, one-line errors, JSON written, Ctrl-C saves and resumes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import char_device, needs_mknod
from mnist_data import mnist_dir, needs_mnist

QUICK = ["--train-samples", "3000", "--test-samples", "500", "--hidden", "32", "--epochs", "1", "--backend", "numpy"]


def gpunn(*args, env=None, timeout=300):
    """``python -m gpunn ARGS``; the hint about a busy machine kept out of the one-line checks."""
    e = {**os.environ, "GPUNN_DATA_DIR": str(mnist_dir()), "GPUNN_LOAD_HINT": "0", **(env or {})}
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
    (["--activation", "swish"], "invalid choice: 'swish'"),
    (["--loss", "hinge"], "invalid choice: 'hinge'"),
    (["--lr-schedule", "warm"], "invalid choice: 'warm'"),
    (["--backend", "tpu"], "invalid choice: 'tpu'"),
    (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--loss", "cross-entropy", "--output-activation", "sigmoid"], "logits"),
    (["--resume", "/nonexistent/ck.npz"], "no such checkpoint"),
    (["--seed", "-1"], "expected an integer >= 0"),
    (["--metrics-json", "/nonexistent/m.json"], "folder /nonexistent does not exist"),   # before training
    (["--save", "/"], "/ is a folder"),
    (["--optimizer", "lamb"], "invalid choice: 'lamb'"),
    (["--dropout", "1"], "expected a number in [0, 1)"),
    (["--optimizer", "adam", "--beta1", "1"], "expected a number in [0, 1)"),
    (["--optimizer", "adamw", "--eps", "0"], "expected a positive finite number"),
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum is SGD's option; this run's optimizer is adam"),
    (["--beta2", "0.9"], "--beta2 is Adam and AdamW's option; this run's optimizer is sgd"),
    (["--fused-step", "--train-samples", "100"], "the fused step cannot train this run: every layer must be at most 32 wide"),
    (["--precision", "tf32"], "--precision tf32 chooses the cuda backend's GEMM, but this run uses the numpy backend"),
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
    p = subprocess.Popen([sys.executable, "-m", "gpunn", "train", "--backend", "numpy", "--train-samples", "60000",
                          "--test-samples", "200", "--hidden", "64", "--epochs", "50", "--batch-size", "8", "--save", str(ck)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and p.poll() is None:   # the first epoch's end saved
        time.sleep(0.01)
    # 0.05 s into epoch 2, which is 7,500 small steps (0.4 s or more on any machine; a step of this net
    # takes well under 0.05 s): the interrupt lands mid-epoch, not at an epoch's end, whatever the speed.
    # (Sleeping longer, into a later epoch, landed on an epoch's end when epochs were fast: CI went red.)
    time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert "Resume with: gpunn train --resume" in err and "Traceback" not in err
    from gpunn import checkpoint
    meta = checkpoint.load(ck)[0]
    assert meta["epoch"] == 1 and meta["step"] > 0          # saved mid-epoch 2, at the current step
    r = gpunn("train", "--resume", ck, "--save", ck, "--epochs", str(meta["epoch"] + 1), "--backend", "numpy",
              "--train-samples", "60000", "--test-samples", "200")   # a run saves only where --save says
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
    """Every command line that writes a file, each writing every output it has to ``out(option)``."""
    fast = ["--backend", "numpy", "--peak-gflops", "1", "--peak-gbs", "1"]
    return [
        ["train", "--data-dir", data, "--hidden", "8", "--epochs", "1", "--backend", "numpy",
         "--save", out("save"), "--metrics-json", out("metrics-json")],
        ["eval", ck, "--data-dir", data, "--backend", "numpy", "--metrics-json", out("metrics-json")],
        ["bench", "softmax", "--sizes", "4x10", "--reps", "1", "--warmup", "0", "--peak-gflops", "1",
         "--peak-gbs", "1", "--json", out("json")],
        ["kernels", "--arch", "sm_90", "--json", out("json")],
        ["profile", *fast, "--hidden", "8", "--batch-size", "8", "--reps", "1", "--warmup", "0",
         "--json", out("json"), "--csv", out("csv"), "--trace", out("trace")],
    ]


@needs_mknod
def test_no_command_replaces_a_device_it_writes_to(tmp_path):
    """``--save /dev/null`` once replaced the machine's /dev/null with a 0600 regular file."""
    import stat

    null = char_device(tmp_path / "null", 3)
    before = os.lstat(null)
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, "--hidden", "8", "--epochs", "1", "--backend", "numpy",
                 "--save", ck).returncode == 0
    for cmd in outputs_of_every_command(data, ck, lambda option: null):   # a device all outputs may share
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
    def link(option):
        (tmp_path / f"real-{option}").write_text("")
        if not (tmp_path / f"latest-{option}").is_symlink():
            (tmp_path / f"latest-{option}").symlink_to(f"real-{option}")
        return tmp_path / f"latest-{option}"

    for cmd in outputs_of_every_command(data, ck, link):
        r = gpunn(*cmd)
        assert r.returncode == 0, (cmd, r.stderr)
        for option in [word[2:] for word in cmd if str(word).startswith("--") and str(word)[2:] in
                       ("save", "metrics-json", "json", "csv", "trace")]:
            assert os.readlink(tmp_path / f"latest-{option}") == f"real-{option}", cmd
            assert (tmp_path / f"real-{option}").stat().st_size > 0, (cmd, option)


def test_a_name_too_long_for_the_temporary_file_is_refused_before_training(tmp_path):
    """It passed the check, trained an epoch, then failed ``File name too long`` at the first save."""
    long = tmp_path / ("c" * 245 + ".npz")
    for option in ("--save", "--metrics-json"):
        r = gpunn("train", "--data-dir", fake_data(tmp_path), *SMALL, "--epochs", "1", option, long)
        assert f"cannot write {long}: its name is 249 bytes long" in one_line_error(r)
        assert r.stdout == "" and "model " not in r.stderr       # refused before the model was even built


def test_one_file_for_two_outputs_or_for_an_output_and_the_checkpoint_read_is_refused(tmp_path):
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", ck).returncode == 0
    before = ck.read_bytes()
    (tmp_path / "sub").mkdir()
    for cmd, needle in [
        (["train", "--data-dir", data, "--backend", "numpy", "--resume", ck, "--epochs", "2", "--metrics-json", ck],
         f"--metrics-json {ck} would replace {ck}, which --resume reads: give --metrics-json another path"),
        (["train", "--data-dir", data, "--backend", "numpy", "--resume", ck, "--epochs", "2", "--save", ck,
          "--metrics-json", tmp_path / "sub" / ".." / "ck.npz"], "which --resume reads"),
        (["train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", tmp_path / "new.npz",
          "--metrics-json", tmp_path / "sub" / ".." / "new.npz"], "name the same file: give each output its own path"),
        (["eval", ck, "--data-dir", data, "--backend", "numpy", "--metrics-json", ck], "which the evaluation reads"),
        (["profile", "--backend", "numpy", "--peak-gflops", "1", "--peak-gbs", "1", "--hidden", "8", "--reps", "1",
          "--json", tmp_path / "p", "--trace", tmp_path / "p"], f"--json {tmp_path / 'p'} and --trace {tmp_path / 'p'}"),
        (["bench", "softmax", "--sizes", "4x10", "--reps", "1", "--json", tmp_path / "b", "--plot", tmp_path / "b"],
         "--json"),
    ]:
        line = one_line_error(gpunn(*cmd))
        assert needle in line, (cmd, line)
    assert ck.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.npz", "data", "sub"]


def one_line_error(r, status=2):
    """The one error line of a failed command (a training run also says what it trains, before)."""
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower() or "warning" in line.lower()]
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
    return errors[0]


SMALL = ["--hidden", "8", "--batch-size", "4", "--backend", "numpy"]


def test_resume_accepts_the_checkpoints_own_options_and_names_a_real_change(tmp_path):
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    run = ["--data-dir", data, *SMALL, "--activation", "tanh", "--lr", "0.05", "--no-nesterov", "--epochs", "1"]
    assert gpunn("train", *run, "--save", ck).returncode == 0
    r = gpunn("train", *run, "--epochs", "2", "--resume", ck, "--save", ck)   # the same command, --resume added
    assert r.returncode == 0, r.stderr
    assert "after 2 epochs" in r.stdout
    for change, saved, given in [(["--hidden", "8,8"], "--hidden 8", "--hidden 8,8"),
                                 (["--lr", "0.5"], "--lr 0.05", "--lr 0.5"),
                                 (["--nesterov"], "--no-nesterov", "--nesterov")]:
        line = one_line_error(gpunn("train", "--data-dir", data, "--resume", ck, "--backend", "numpy", *change))
        assert f"{ck}: --resume continues the checkpoint's run, which has {saved}; got {given} " \
               "(only --epochs may change)" in line, line


def test_a_resumed_run_saves_only_where_save_says(tmp_path):
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", ck).returncode == 0
    before = ck.read_bytes()
    r = gpunn("train", "--data-dir", data, "--backend", "numpy", "--resume", ck, "--epochs", "3")
    assert r.returncode == 0 and "after 3 epochs" in r.stdout, r.stderr
    assert ck.read_bytes() == before                       # the finished run is still there
    assert f"this run saves no checkpoint ({ck} stays as it is)" in r.stderr
    r = gpunn("train", "--data-dir", data, "--backend", "numpy", "--resume", ck, "--epochs", "3", "--save", ck)
    assert r.returncode == 0 and checkpoint_epoch(ck) == 3


def checkpoint_epoch(path):
    from gpunn import checkpoint

    return checkpoint.load(path)[0]["epoch"]


INTERRUPT_AT = """
import os, signal, sys
import gpunn.optim as optim
real, calls = optim.SGD.step, [0]
def step(self, *args, **kwargs):
    real(self, *args, **kwargs)
    calls[0] += 1
    if calls[0] == int(os.environ["INTERRUPT_AT_STEP"]):
        os.kill(os.getpid(), getattr(signal, os.environ.get("INTERRUPT_SIGNAL", "SIGINT")))   # Ctrl-C, at a known step
optim.SGD.step = step
from gpunn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_resume_command_printed_after_ctrl_c_works(tmp_path):
    """A run on its own --data-dir and --train-samples, interrupted: the printed command continues it."""
    import shlex

    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_DATA_DIR"}
    env.update(INTERRUPT_AT_STEP="7", GPUNN_CACHE_DIR=str(tmp_path / "empty-cache"))
    r = subprocess.run([sys.executable, "-c", INTERRUPT_AT, "train", "--data-dir", str(data), "--train-samples", "20",
                        "--test-samples", "8", *SMALL, "--epochs", "2", "--save", str(ck)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 130, r.stderr
    assert "interrupted at epoch 2, step 2" in r.stderr, r.stderr
    command = r.stderr.split("Resume with: ")[1].strip()
    words = shlex.split(command)
    assert words[:2] == ["gpunn", "train"]
    r = subprocess.run([sys.executable, "-m", "gpunn", *words[1:]], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, (command, r.stderr)
    assert "after 2 epochs" in r.stdout and checkpoint_epoch(ck) == 2


def interrupted_run(tmp_path, signame, at_step, *args):
    """``gpunn train ARGS`` on the fake data, sent ``signame`` by itself after step ``at_step``."""
    env = {k: v for k, v in os.environ.items() if k != "GPUNN_DATA_DIR"}
    env.update(INTERRUPT_AT_STEP=str(at_step), INTERRUPT_SIGNAL=signame, GPUNN_CACHE_DIR=str(tmp_path / "empty-cache"))
    return subprocess.run([sys.executable, "-c", INTERRUPT_AT, "train", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=300), env


def arrays(path):
    """A checkpoint's weights and velocities."""
    import numpy as np

    with np.load(path) as z:
        return {k: z[k] for k in z.files if k != "meta"}


def test_sigterm_mid_epoch_saves_and_the_resumed_run_is_bit_exact(tmp_path):
    """SIGTERM (timeout, Slurm, systemd, docker stop) once ended a run with status 143 and no word,
    losing the epoch in flight: now it stops as Ctrl-C does, at a step boundary, saved."""
    import shlex

    data, ck, straight = fake_data(tmp_path), tmp_path / "ck.npz", tmp_path / "straight.npz"
    run = ["--data-dir", data, "--train-samples", "20", "--test-samples", "8", *SMALL, "--epochs", "2"]
    assert gpunn("train", *run, "--save", straight).returncode == 0
    r, env = interrupted_run(tmp_path, "SIGTERM", 7, *run, "--save", ck)
    assert r.returncode == 143, r.stderr
    assert f"gpunn: terminated (SIGTERM) at epoch 2, step 2; saved {ck}. Resume with: " in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    from gpunn import checkpoint
    meta = checkpoint.load(ck)[0]
    assert (meta["epoch"], meta["step"]) == (1, 2)          # the epoch in flight, kept
    words = shlex.split(r.stderr.split("Resume with: ")[1].strip())
    r = subprocess.run([sys.executable, "-m", "gpunn", *words[1:]], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0 and "after 2 epochs" in r.stdout, r.stderr
    got, want = arrays(ck), arrays(straight)
    assert got.keys() == want.keys() and all(got[k].tobytes() == want[k].tobytes() for k in want)


def test_sigterm_without_save_is_one_line_and_exit_143(tmp_path):
    r, _ = interrupted_run(tmp_path, "SIGTERM", 3, "--data-dir", fake_data(tmp_path), "--train-samples", "20",
                           *SMALL, "--epochs", "2")
    assert r.returncode == 143, r.stderr
    assert "gpunn: terminated (SIGTERM) at epoch 1" in r.stderr and "(nothing saved: use --save PATH)" in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


SIGTERM_AT_START = """
import os, signal, sys
from gpunn import cli
def commands():
    os.kill(os.getpid(), signal.SIGTERM)   # while the commands are imported
    raise AssertionError("SIGTERM did not stop the start-up")
cli._extra_commands = commands
status = cli.main(["train", "--epochs", "1"])
print(status, signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_sigterm_during_start_up_is_one_line():
    r = subprocess.run([sys.executable, "-c", SIGTERM_AT_START], capture_output=True, text=True, timeout=120)
    assert r.stderr == "gpunn: terminated (SIGTERM)\n", r.stderr
    assert r.stdout == "143 True\n"                         # and SIGTERM is the default again afterwards


def test_divergence_names_a_checkpoint_only_if_this_run_wrote_it(tmp_path):
    data, prev = fake_data(tmp_path), tmp_path / "prev.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", prev).returncode == 0
    before = prev.read_bytes()                         # an earlier, unrelated run's checkpoint
    diverge = ["--data-dir", data, *SMALL, "--epochs", "2", "--lr", "1e30"]
    line = one_line_error(gpunn("train", *diverge, "--save", prev), status=1)
    assert "loss became nan at epoch 1" in line and "checkpoint" not in line and "prev.npz" not in line, line
    assert prev.read_bytes() == before


def test_divergence_after_a_save_names_the_checkpoint(tmp_path):
    """Epoch 1 is saved at a sane rate; resumed with a rate that diverges (written into the
    checkpoint: --resume allows no other --lr), the run names the checkpoint it resumed from."""
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", ck).returncode == 0
    from gpunn import checkpoint
    from gpunn.output import atomic_write
    import numpy as np

    with np.load(ck) as z:   # the same run, with a learning rate that diverges from here on
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    meta["train"]["lr"] = 1e30
    arrays["meta"] = np.array(json.dumps(meta))
    atomic_write(ck, lambda f: np.savez(f, **arrays))
    line = one_line_error(gpunn("train", "--data-dir", data, "--backend", "numpy", "--resume", ck, "--epochs", "3"),
                          status=1)
    assert "loss became nan at epoch 2" in line and f"the last good checkpoint is {ck}" in line, line
    assert checkpoint.load(ck)[0]["epoch"] == 1


@needs_mnist
def test_after_a_resume_the_time_figures_add_up(tmp_path):
    ck = tmp_path / "ck.npz"
    run = ["--train-samples", "3000", "--test-samples", "500", "--hidden", "32", "--backend", "numpy"]
    assert gpunn("train", *run, "--epochs", "3", "--save", ck).returncode == 0
    r = gpunn("train", *run, "--epochs", "4", "--resume", ck, "--save", ck, "--metrics-json", tmp_path / "m.json")
    assert r.returncode == 0, r.stderr
    import re

    m = re.search(r"after 4 epochs \(([\d.]+) s training in this run, ([\d.]+) s with evaluation; "
                  r"([\d.]+) s training over all 4 epochs\)", r.stdout)
    assert m, r.stdout
    this_run, wall, total = map(float, m.groups())
    assert this_run <= wall and this_run <= total
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["train_seconds"] == pytest.approx(sum(e["seconds"] for e in metrics["epochs"]))
    assert abs(metrics["train_seconds"] - total) <= 0.05 + 1e-9


def test_one_epoch_is_singular(tmp_path):
    r = gpunn("train", "--data-dir", fake_data(tmp_path), *SMALL, "--epochs", "1")
    assert r.returncode == 0 and "after 1 epoch (" in r.stdout, r.stdout


def test_ctrl_c_during_start_up_is_one_line(monkeypatch, capsys):
    """Importing the commands takes a moment; a Ctrl-C then gave a KeyboardInterrupt traceback."""
    from gpunn import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_extra_commands", interrupted)
    try:
        status = cli.main(["train", "--epochs", "1"])
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C during start-up escaped main(): a traceback")
    assert status == 130
    assert capsys.readouterr().err == "gpunn: interrupted\n"


def test_bench_checks_plot_before_the_sweep(tmp_path):
    """Without matplotlib, --plot is refused before anything is validated, timed or written."""
    fake = tmp_path / "site" / "matplotlib"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    r = gpunn("bench", "softmax", "--sizes", "4x10", "--reps", "1", "--warmup", "0", "--peak-gflops", "1",
              "--peak-gbs", "1", "--json", tmp_path / "b.json", "--plot", tmp_path / "b.png",
              env={"PYTHONPATH": str(tmp_path / "site")})
    assert 'needs matplotlib: pip install "gpunn[plot]"' in one_line_error(r)
    assert r.stdout == "" and not (tmp_path / "b.json").exists()


def test_a_bad_backend_in_the_environment_is_refused_by_bench():
    r = gpunn("bench", "softmax", "--sizes", "4x10", "--reps", "1", env={"GPUNN_BACKEND": "bogus"})
    line = one_line_error(r)
    assert "unknown backend 'bogus' (from GPUNN_BACKEND); expected one of auto, numpy, cuda" in line, line


@pytest.mark.parametrize("backend_args", [["--backend", "numpy"], []])
def test_gemm_on_the_numpy_backend_is_refused(tmp_path, backend_args):
    r = gpunn("train", "--data-dir", fake_data(tmp_path), "--hidden", "8", "--epochs", "1", "--gemm", "numba",
              *backend_args)
    line = one_line_error(r)
    assert "--gemm numba chooses the cuda backend's GEMM, but this run uses the numpy backend" in line, line


def test_messages_say_what_is_wrong(tmp_path):
    a_file = tmp_path / "passwd"
    a_file.write_text("root:x:0:0\n")
    line = one_line_error(gpunn("train", "--data-dir", a_file, "--backend", "numpy"))
    assert f"{a_file} is a file, not a folder" in line, line
    line = one_line_error(gpunn("eval", tmp_path, "--backend", "numpy"))
    assert f"{tmp_path} is a folder, not a checkpoint file" in line, line
    (tmp_path / "random.npz").write_bytes(os.urandom(200))
    line = one_line_error(gpunn("eval", tmp_path / "random.npz", "--backend", "numpy"))
    assert "not a gpunn checkpoint (not an .npz archive)" in line and "pickle" not in line, line
    line = one_line_error(gpunn("kernels", "--block", "5000"))
    assert "expected a block size of 1 to 1024 threads (CUDA's limit), got '5000'" in line, line


def test_errors_about_a_checkpoints_contents_name_the_file(tmp_path):
    import numpy as np

    from gpunn.output import atomic_write

    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", ck).returncode == 0
    with np.load(ck) as z:
        arrays = dict(z)
    meta = json.loads(str(arrays["meta"]))
    for name, edit, cmd in [
        ("options.npz", lambda m: m["train"].update(lr=-1), "train"),
        ("unknown.npz", lambda m: m["train"].update(dropout=0.5), "train"),
        ("model.npz", lambda m: m["model"][0].pop("out"), "eval"),
    ]:
        bad = json.loads(json.dumps(meta))
        edit(bad)
        path = tmp_path / name
        atomic_write(path, lambda f: np.savez(f, **{**arrays, "meta": np.array(json.dumps(bad))}))
        args = ["--resume", path, "--epochs", "2"] if cmd == "train" else [path]
        line = one_line_error(gpunn(cmd, *args, "--data-dir", data, "--backend", "numpy"))
        assert f"{path}: " in line, line


@needs_mknod
def test_a_full_disk_names_the_file_and_exits_1(tmp_path):
    full = char_device(tmp_path / "full", 7)   # /dev/full's numbers
    r = gpunn("train", "--data-dir", fake_data(tmp_path), *SMALL, "--epochs", "1", "--metrics-json", full)
    assert f"cannot write {full}: No space left on device" in one_line_error(r, status=1)


def test_the_simulator_without_numba_suggests_the_sim_extra():
    script = ("import sys\nsys.modules['numba'] = None\nfrom gpunn.cli import main\n"
              "sys.exit(main(['train', '--backend', 'cuda']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    line = one_line_error(r)
    assert 'pip install "gpunn[sim]"' in line and "cuda12" not in line, line


def test_auto_says_why_in_one_level_of_parentheses():
    script = ("import sys\nsys.modules['cupy'] = None\nfrom gpunn.backend import get_backend\nget_backend('auto')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.startswith("gpunn: using the numpy backend (") and "((" not in r.stderr \
        and "(cupy)" not in r.stderr, r.stderr


def test_eval_needs_only_the_test_files(tmp_path):
    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    assert gpunn("train", "--data-dir", data, *SMALL, "--epochs", "1", "--save", ck).returncode == 0
    for f in data.glob("train-*"):
        f.unlink()
    r = gpunn("eval", ck, "--data-dir", data, "--backend", "numpy")
    assert r.returncode == 0 and "test accuracy" in r.stdout and "(12 images" in r.stdout, r.stderr


THREADS_SEEN = """
import sys
from threadpoolctl import threadpool_info
from gpunn import cli
from gpunn.train import Trainer
def fit(self):
    print(sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}))
    return []
Trainer.fit = fit
sys.exit(cli.main(sys.argv[1:]))
"""


def test_threads_limits_blas_for_the_run(tmp_path):
    args = ["train", "--data-dir", str(fake_data(tmp_path)), *SMALL, "--epochs", "1"]
    r = subprocess.run([sys.executable, "-c", THREADS_SEEN, *args, "--threads", "1"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "[1]", r.stdout
    assert "positive integer" in one_line_error(gpunn(*args, "--threads", "0"))


def load_hints(err):
    return [line for line in err.splitlines() if "--threads 1" in line]


@pytest.mark.parametrize("command", ["train", "eval", "profile", "bench"])
def test_a_busy_machine_is_told_about_threads_in_one_line(tmp_path, monkeypatch, capsys, command):
    """On a loaded machine the quick start took 704 s instead of ~20 s (BLAS threads fighting the
    other processes), without a word; --threads 1 ran it at ~10 s an epoch."""
    from gpunn import cli

    data, ck = fake_data(tmp_path), tmp_path / "ck.npz"
    args = {"train": ["train", "--data-dir", str(data), *SMALL, "--epochs", "1", "--save", str(ck)],
            "eval": ["eval", str(ck), "--data-dir", str(data), "--backend", "numpy"],
            "profile": ["profile", "--backend", "numpy", "--peak-gflops", "1", "--peak-gbs", "1", "--hidden", "8",
                        "--batch-size", "8", "--reps", "1", "--warmup", "0"],
            "bench": ["bench", "softmax", "--sizes", "4x10", "--reps", "1", "--warmup", "0", "--peak-gflops", "1",
                      "--peak-gbs", "1"]}
    monkeypatch.delenv("GPUNN_LOAD_HINT", raising=False)
    cores = os.cpu_count()
    monkeypatch.setattr(os, "getloadavg", lambda: (cores, 0.0, 0.0))          # busy, not over-busy: quiet
    assert cli.main(args["train"]) == 0 and load_hints(capsys.readouterr().err) == []
    monkeypatch.setattr(os, "getloadavg", lambda: (cores + 1.5, 0.0, 0.0))
    assert cli.main(args[command]) == 0, capsys.readouterr().err
    hints = load_hints(capsys.readouterr().err)
    assert hints == [f"gpunn: the machine is busy (load average {cores + 1.5:.1f} on {cores} cores): BLAS's thread "
                     "per core will compete with the other processes; --threads 1 may run many times faster"], hints
    assert cli.main([*args[command], "--threads", "1"]) == 0                   # the user chose: quiet
    assert load_hints(capsys.readouterr().err) == []
    monkeypatch.setenv("GPUNN_LOAD_HINT", "0")
    assert cli.main(args[command]) == 0 and load_hints(capsys.readouterr().err) == []


def test_commands_without_threads_say_nothing_about_load(monkeypatch, capsys):
    from gpunn import cli

    monkeypatch.delenv("GPUNN_LOAD_HINT", raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (os.cpu_count() + 9.0, 0.0, 0.0))
    assert cli.main(["kernels", "--arch", "sm_90"]) == 0
    assert load_hints(capsys.readouterr().err) == []
