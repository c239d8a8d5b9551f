"""Checkpoints: pickle-free, atomic, and clear about what is wrong with a bad one."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import char_device, needs_mknod
from gpunn import checkpoint
from gpunn.backend import NumpyBackend
from gpunn.errors import CheckpointError
from gpunn.layers import mlp
from gpunn.optim import SGD

be = NumpyBackend()


def model(sizes=(6, 5, 3), seed=0):
    return mlp(list(sizes), "tanh", backend=be, seed=seed)


def test_round_trip_weights_velocities_and_meta(tmp_path):
    m = model()
    opt = SGD(m.params, m.grads, 0.1, momentum=0.9, backend=be)
    for v in opt.velocities:
        v[...] = np.random.default_rng(1).standard_normal(v.shape)
    checkpoint.save(tmp_path / "a.npz", m, opt, {"epoch": 3})
    m2 = model(seed=5)
    opt2 = SGD(m2.params, m2.grads, 0.1, momentum=0.9, backend=be)
    meta = checkpoint.restore(tmp_path / "a.npz", m2, opt2)
    assert meta["epoch"] == 3
    assert all(np.array_equal(a, b) for a, b in zip(m.params, m2.params))
    assert all(np.array_equal(a, b) for a, b in zip(opt.velocities, opt2.velocities))
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:   # no pickle needed
        assert "meta" in z.files


def test_truncated_and_foreign_files(tmp_path):
    checkpoint.save(tmp_path / "a.npz", model())
    data = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "t.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="t.npz: not a gpunn checkpoint, or truncated"):
        checkpoint.load(tmp_path / "t.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CheckpointError, match="other.npz: not a gpunn checkpoint"):
        checkpoint.load(tmp_path / "other.npz")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.npz")


def test_other_architecture_names_the_layer(tmp_path):
    checkpoint.save(tmp_path / "a.npz", model((6, 5, 3)))
    with pytest.raises(CheckpointError, match=r"layer 0 differs: checkpoint has Dense\(6→5, tanh\), the model has Dense\(6→7, tanh\)"):
        checkpoint.restore(tmp_path / "a.npz", model((6, 7, 3)))
    with pytest.raises(CheckpointError, match="checkpoint has 2 layers, the model has 3"):
        checkpoint.restore(tmp_path / "a.npz", model((6, 5, 4, 3)))


def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint(tmp_path):
    """Kill -9 a process while it is inside np.savez: the old file is intact, no temp file is taken for it."""
    target = tmp_path / "ck.npz"
    checkpoint.save(target, model(seed=1))
    before = target.read_bytes()
    script = textwrap.dedent(f"""
        import os, sys, time, numpy as np
        from gpunn import checkpoint
        from gpunn.backend import NumpyBackend
        from gpunn.layers import mlp
        real = np.savez
        def slow_savez(f, **arrays):
            f.write(b"PK partial bytes")
            f.flush()
            print("writing", flush=True)
            time.sleep(60)
        np.savez = slow_savez
        checkpoint.save({str(target)!r}, mlp([6, 5, 3], "tanh", backend=NumpyBackend(), seed=2))
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    assert target.read_bytes() == before
    m = model(seed=9)
    checkpoint.restore(target, m)
    assert all(np.array_equal(a, b) for a, b in zip(m.params, model(seed=1).params))


# ---------------------------------------------------------------------------- hostile checkpoints
# A checkpoint is untrusted input: each crafted field below once trained wrong, hung, took the
# machine's memory or ended in a traceback. Each is now one line naming the file and the field.

SMALL = ["--hidden", "8", "--batch-size", "4", "--backend", "numpy"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(data folder, a checkpoint after 1 epoch of a momentum run) from the command line."""
    from test_data import fake_mnist, write_mnist

    from gpunn.cli import main

    folder = tmp_path_factory.mktemp("run")
    data = write_mnist(folder / "data", fake_mnist(rows=4, cols=3))
    ck = folder / "ck.npz"
    os.environ["GPUNN_LOAD_HINT"] = "0"
    assert main(["train", "--data-dir", str(data), *SMALL, "--epochs", "1", "--save", str(ck)]) == 0
    return data, ck


def craft(ck, out, meta=None, arrays=None, drop=()):
    """A copy of ``ck`` at ``out`` with ``meta(dict)`` applied to its metadata, ``arrays`` replaced
    (name -> array, or name -> raw meta string) and the entries in ``drop`` left out."""
    with np.load(ck, allow_pickle=False) as z:
        members = {k: z[k] for k in z.files}
    info = json.loads(str(members["meta"]))
    if meta is not None:
        meta(info)
    members["meta"] = np.array(json.dumps(info))
    members.update(arrays or {})
    for k in drop:
        members.pop(k)
    np.savez(out, **members)
    return out


def _set(path, value):
    def edit(info):
        *keys, last = path
        target = info
        for k in keys:
            target = target[k]
        target[last] = value
    return edit


def _several(*edits):
    def edit(info):
        for e in edits:
            e(info)
    return edit


META_CASES = [
    (_set(["train", "gamma"], -1), "train.gamma must be a positive finite number"),  # once trained at lr -0.1
    (_set(["train", "gamma"], 0), "train.gamma must be"),
    (_set(["train", "nesterov"], "no"), "train.nesterov must be true or false"),  # once became True
    (_set(["train", "epochs"], True), "train.epochs must be a positive integer, got True"),
    (_set(["train", "momentum"], "0.9"), "train.momentum must be a number in [0, 1)"),
    (_set(["train", "momentum"], 1.5), "train.momentum must be"),
    (_set(["train", "weight_decay"], -1), "train.weight_decay must be"),
    (_set(["train", "seed"], "abc"), "train.seed must be an integer"),
    (_set(["train", "eval_batch_size"], 0), "train.eval_batch_size must be a positive integer"),
    (_set(["train", "lr"], 1e39), "train.lr must be a positive finite number"),
    (_set(["train", "hidden"], 5), "train.hidden must be a list of positive integers"),
    (_set(["train", "step_size"], -3), "train.step_size must be"),
    (_set(["step"], -2), "step must be an integer in [0, "),  # once "resuming at step -2"
    (_set(["step"], 10**6), "step must be an integer in [0, "),
    (_set(["epoch"], -1), "epoch must be a non-negative integer"),
    (_set(["epoch"], 5), "history must list the 5 finished epochs"),
    (_set(["data"], {}), "data must be a record of train_samples, train_labels_crc32"),
    (_set(["data", "train_samples"], 7), "data: the run was trained on 7 examples"),
    (_set(["history", 0, "loss"], "x"), "history[0].loss must be a finite number"),
    (_set(["history", 0, "epoch"], 3), "history[0].epoch must be 1"),
    (_set(["partial"], {"loss_sum": 1.0}), "partial must be null at the start of an epoch"),
    (_set(["step"], 2), "partial must be a record of loss_sum, correct, seconds, seen after step 2"),
    (_several(_set(["step"], 2), _set(["partial"], {"loss_sum": 1.0, "correct": 99, "seconds": 0.1, "seen": 8})),
     "partial.correct must be an integer in [0, 8]"),
    (_several(_set(["step"], 2), _set(["partial"], {"loss_sum": 1.0, "correct": 1, "seconds": 0.1, "seen": 5})),
     "partial.seen must be 8"),
    (_set(["in_features"], 7), "the checkpoint's model expects 7"),
    (_set(["model"], "abc"), "model"),
]


@pytest.mark.parametrize("edit, fragment", META_CASES, ids=[c[1][:40] for c in META_CASES])
def test_a_crafted_field_is_one_line_naming_file_and_field(run, tmp_path, capsys, edit, fragment):
    from gpunn.cli import main

    data, ck = run
    bad = craft(ck, tmp_path / "bad.npz", meta=edit)
    code = main(["train", "--resume", str(bad), "--data-dir", str(data), "--backend", "numpy", "--epochs", "3"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and fragment in lines[0], lines[0]


ARRAY_CASES = [
    ({"param/0": np.full((12, 8), np.nan, np.float32)}, (), "param/0 holds 96 values that are not finite"),
    ({"param/1": np.array([np.inf] * 8, np.float32)}, (), "param/1 holds 8 values that are not finite"),
    ({"param/0": np.zeros((12, 9), np.float32)}, (), "param/0 is float32(12, 9), the model needs float32(12, 8)"),
    ({"param/0": np.zeros((12, 8), np.float64)}, (), "param/0 is float64(12, 8), the model needs float32(12, 8)"),
    ({"velocity/0": np.zeros((12, 8), np.int64)}, (), "velocity/0 is int64(12, 8)"),
    ({"velocity/0": np.zeros((12, 8), np.complex64)}, (), "velocity/0 is complex64(12, 8)"),
    ({"velocity/2": np.full((8, 10), np.nan, np.float32)}, (), "velocity/2 holds 80 values that are not finite"),
    ({}, ("velocity/1",), "velocity/1 is missing"),  # once silently zero: the resume was not exact
    ({}, ("param/3",), "param/3 is missing"),
    ({"param/9": np.zeros(3, np.float32)}, (), "param/9: the model has 4 parameter arrays"),
]


# gpunn eval reads no optimizer state: the velocity cases run with train only
ARRAY_RUNS = [(command, *case) for case in ARRAY_CASES for command in ("train", "eval")
              if command == "train" or not case[2].startswith("velocity/")]


@pytest.mark.parametrize("command, arrays, drop, fragment", ARRAY_RUNS,
                         ids=[f"{c[0]}-{c[3][:40]}" for c in ARRAY_RUNS])
def test_crafted_weights_and_optimizer_state_are_refused(run, tmp_path, capsys, arrays, drop, fragment, command):
    from gpunn.cli import main

    data, ck = run
    bad = craft(ck, tmp_path / "bad.npz", arrays=arrays, drop=drop)
    argv = (["train", "--resume", str(bad), "--epochs", "3"] if command == "train" else ["eval", str(bad)])
    code = main([*argv, "--data-dir", str(data), "--backend", "numpy"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert str(bad) in lines[0] and fragment in lines[0], lines[0]


def _patch_members(path, local_offset, central_offset, value, size=2):
    """Set a 2-byte field of every local and central zip header (method at 8/10, flags at 6/8)."""
    raw = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", local_offset), (b"PK\x01\x02", central_offset)):
        at = raw.find(signature)
        while at >= 0:
            raw[at + offset:at + offset + size] = value.to_bytes(size, "little")
            at = raw.find(signature, at + 4)
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("patch, fragment", [
    (lambda p: _patch_members(p, 8, 10, 99), "format.npy uses zip compression method 99"),
    (lambda p: _patch_members(p, 6, 8, 1), "format.npy is encrypted"),
])
def test_zip_members_gpunn_never_writes_are_refused(run, tmp_path, patch, fragment):
    bad = patch(craft(run[1], tmp_path / "bad.npz"))
    with pytest.raises(CheckpointError, match=fragment):
        checkpoint.read_meta(bad)


def test_metadata_nested_without_end_is_refused_not_a_recursion_error(run, tmp_path):
    bad = craft(run[1], tmp_path / "bad.npz", arrays={"meta": np.array("[" * 100_000)})
    with pytest.raises(CheckpointError, match="meta: nested too deeply"):
        checkpoint.read_meta(bad)


def test_a_fifo_as_a_checkpoint_is_refused_not_waited_on(tmp_path):
    from conftest import within

    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="a FIFO, not a regular file"):
        within(10, lambda: checkpoint.read_meta(fifo))


@needs_mknod
def test_a_zero_device_as_a_checkpoint_is_refused(tmp_path):
    dev = char_device(tmp_path / "zero.npz", 5)
    with pytest.raises(CheckpointError, match="a character device, not a regular file"):
        checkpoint.read_meta(dev)


_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
from gpunn.cli import main
sys.exit(main(["eval", sys.argv[1], "--data-dir", sys.argv[2], "--backend", "numpy"]))
"""


def test_a_size_bombed_array_is_refused_before_it_is_inflated(run, tmp_path):
    # param/0 declares 2^29 float32 (2 GiB, deflated to about 2 MB): its header is compared with the
    # model's Dense(12→8) before a byte of its data is inflated.
    import zipfile

    data, ck = run
    bad = craft(ck, tmp_path / "bomb.npz", drop=("param/0",))
    header = {"descr": "<f4", "fortran_order": False, "shape": (1 << 29,)}
    with zipfile.ZipFile(bad, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z, \
            z.open("param/0.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        block = bytes(64 << 20)
        for _ in range((4 << 29) // len(block)):
            f.write(block)
    assert bad.stat().st_size < 16 << 20
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", GPUNN_LOAD_HINT="0",
               PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _BOMB, str(bad), str(data)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "param/0 is float32(536870912,), the model needs float32(12, 8)" in proc.stderr, proc.stderr[-3000:]


def test_gpunn_save_and_load_round_trip_on_every_backend(backend, tmp_path):
    """gpunn.save(model, path) and gpunn.load(path, backend=...): the architecture and the weights,
    so the loaded model predicts as the saved one did."""
    import gpunn
    from gpunn.layers import mlp

    model = mlp([6, 5, 4, 3], "tanh", backend=backend, seed=3)
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(np.float32)
    want = backend.to_numpy(model(backend.asarray(x))).copy()
    gpunn.save(model, tmp_path / "m.npz")
    loaded = gpunn.load(tmp_path / "m.npz", backend=backend)
    assert repr(loaded) == repr(model) and loaded.backend is backend
    for a, b in zip(model.params, loaded.params):
        assert np.array_equal(backend.to_numpy(a), backend.to_numpy(b))
    np.testing.assert_array_equal(backend.to_numpy(loaded(backend.asarray(x))), want)
    np.testing.assert_array_equal(loaded.predict(x), want.argmax(axis=1))


def test_gpunn_load_refuses_what_is_not_a_model(tmp_path):
    import gpunn

    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="bad.npz"):
        gpunn.load(tmp_path / "bad.npz", backend="numpy")
