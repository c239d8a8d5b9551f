"""Output files: regular files replaced atomically, and nothing the user did not make replaced.

Special files are made in a temporary folder: a FIFO (anyone may), and character devices
with the numbers of /dev/null and /dev/full (only as root: mknod needs CAP_MKNOD)."""
import errno
import json
import os
import re
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from conftest import char_device, needs_mknod
from gpunn import checkpoint, output
from gpunn.backend import NumpyBackend
from gpunn.errors import GpunnError, OutputError
from gpunn.layers import mlp

be = NumpyBackend()


def model(seed=0):
    return mlp([6, 5, 3], "tanh", backend=be, seed=seed)


def read_fifo(path):
    """Start a reader of the FIFO ``path``; returns a function that gives what it read."""
    got = []
    t = threading.Thread(target=lambda: got.append(open(path, "rb").read()), daemon=True)
    t.start()

    def result():
        t.join(30)
        assert not t.is_alive(), "the writer never closed the FIFO"
        return got[0]

    return result


def test_a_new_file_gets_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        output.write_json(tmp_path / "m.json", {"a": 1})
        checkpoint.save(tmp_path / "ck.npz", model())
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "m.json").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(tmp_path / "ck.npz").st_mode) == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "m.json"
    target.write_text("{}")
    target.chmod(0o640)
    output.write_json(target, {"a": 1})
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o640 and json.loads(target.read_text()) == {"a": 1}


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    (tmp_path / "runs").mkdir()
    real = tmp_path / "runs" / "ck-0003.npz"
    checkpoint.save(real, model(seed=1))
    link = tmp_path / "latest.npz"
    link.symlink_to(os.path.join("runs", "ck-0003.npz"))   # relative, as `ln -s` makes them
    checkpoint.save(link, model(seed=2))
    assert link.is_symlink() and os.readlink(link) == os.path.join("runs", "ck-0003.npz")
    m = model(seed=9)
    checkpoint.restore(real, m)
    assert all(np.array_equal(a, b) for a, b in zip(m.params, model(seed=2).params))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.npz", "runs"]   # no temporary left
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["ck-0003.npz"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "m.json"
    link.symlink_to(tmp_path / "real.json")
    output.write_json(link, {"a": 1})
    assert link.is_symlink() and json.loads((tmp_path / "real.json").read_text()) == {"a": 1}


def test_a_fifo_is_written_into_never_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = read_fifo(fifo)
    output.write_json(fifo, {"a": 1})
    assert json.loads(got()) == {"a": 1}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    got = read_fifo(fifo)                          # a checkpoint, too (np.savez into memory first)
    checkpoint.save(fifo, model(seed=3))
    data = got()
    assert data[:2] == b"PK" and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    ck = tmp_path / "copy.npz"
    ck.write_bytes(data)
    m = model(seed=9)
    checkpoint.restore(ck, m)
    assert all(np.array_equal(a, b) for a, b in zip(m.params, model(seed=3).params))


@needs_mknod
def test_a_character_device_is_written_into_never_replaced(tmp_path):
    null = char_device(tmp_path / "null", 3)
    before = os.lstat(null)
    checkpoint.save(null, model())
    output.write_json(null, {"a": 1})
    st = os.lstat(null)
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
    assert (st.st_ino, st.st_mode) == (before.st_ino, before.st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null"]   # no temporary beside it


@needs_mknod
def test_a_symlink_to_a_device_is_written_into(tmp_path):
    null = char_device(tmp_path / "null", 3)
    (tmp_path / "out.json").symlink_to(null)
    output.write_json(tmp_path / "out.json", {"a": 1})
    assert (tmp_path / "out.json").is_symlink() and stat.S_ISCHR(os.lstat(null).st_mode)


@needs_mknod
def test_a_full_disk_names_the_file(tmp_path):
    full = char_device(tmp_path / "full", 7)
    with pytest.raises(OutputError, match=f"cannot write {full}: No space left on device"):
        output.write_json(full, {"a": 1})
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_a_failed_write_names_the_file_and_leaves_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "m.json"
    output.write_json(target, {"old": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=f"cannot write {target}: No space left on device"):
        output.write_json(target, {"new": 1})
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_other_special_files_are_refused_in_one_line(tmp_path):
    import socket

    path = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    try:
        with pytest.raises(GpunnError, match="it is a socket; gpunn writes regular files, FIFOs and character devices"):
            output.write_json(path, {})
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_stale_temporaries_of_a_killed_writer_are_removed_by_the_next_save(tmp_path):
    """Kill -9 a writer mid-save: its temporary is left; the next save of the same name removes it."""
    target = tmp_path / "ck.npz"
    checkpoint.save(target, model(seed=1))
    script = (
        "import time, numpy as np\n"
        "from gpunn import checkpoint\nfrom gpunn.backend import NumpyBackend\nfrom gpunn.layers import mlp\n"
        "def slow_savez(f, **arrays):\n"
        "    f.write(b'PK partial bytes'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "np.savez = slow_savez\n"
        f"checkpoint.save({str(target)!r}, mlp([6, 5, 3], 'tanh', backend=NumpyBackend(), seed=2))\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    old_style = tmp_path / ".ck.npz.a1b2c3d4.tmp"          # what gpunn's earlier versions left
    old_style.write_bytes(b"x")
    others = [tmp_path / ".other.npz.1.abcd.tmp", tmp_path / f".ck.npz.{os.getppid()}.abcd.tmp"]  # another name; a live writer
    for o in others:
        o.write_bytes(b"x")
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".ck.npz.")]
    assert len(stale) == 3
    checkpoint.save(target, model(seed=3))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck.npz", *(o.name for o in others)])


def test_check_writable_follows_links_and_refuses_folders(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "to-dir").symlink_to(tmp_path / "d")
    with pytest.raises(GpunnError, match="is a folder"):
        output.check_writable(tmp_path / "to-dir")
    (tmp_path / "to-nowhere").symlink_to(tmp_path / "missing" / "x.json")
    with pytest.raises(GpunnError, match=r"folder .*missing \(where .*to-nowhere points\) does not exist"):
        output.check_writable(tmp_path / "to-nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(GpunnError, match="loop"):
        output.check_writable(tmp_path / "loop")


def test_dev_stdout_continues_the_stream_it_names(tmp_path):
    """``--json /dev/stdout > out.txt``: what was printed before stays; out.txt is not replaced."""
    script = "from gpunn import output; print('table', flush=True); output.write_json('/dev/stdout', {'a': 1})"
    with open(tmp_path / "out.txt", "w") as out:
        r = subprocess.run([sys.executable, "-c", script], stdout=out, stderr=subprocess.PIPE, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out.txt").read_text() == 'table\n{\n  "a": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_a_name_too_long_for_its_temporary_file_is_refused_before_any_work(tmp_path):
    """A 249-byte name passed the check, then the first write failed ``File name too long``: its
    temporary ``.NAME.<pid>.<random>.tmp`` is 22 bytes longer (a process id of up to 7 digits)."""
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = limit - 22
    with pytest.raises(GpunnError, match=rf"its name is {longest + 1} bytes long; .* this folder allows {limit}: "
                                         rf"use a name of at most {longest} bytes"):
        output.check_writable(tmp_path / ("a" * (longest - 3) + ".npz"))
    fits = tmp_path / ("a" * (longest - 4) + ".npz")
    output.check_writable(fits)
    checkpoint.save(fits, model())   # the longest name allowed is written, whatever this process's id
    assert sorted(p.name for p in tmp_path.iterdir()) == [fits.name]


def test_two_outputs_naming_one_file_are_refused(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.json").symlink_to("m.json")
    same = [tmp_path / "m.json", tmp_path / "sub" / ".." / "m.json", tmp_path / "link.json"]
    for other in same:
        with pytest.raises(GpunnError, match=rf"--json {re.escape(str(tmp_path / 'm.json'))} and --csv {re.escape(str(other))} name the same file: "
                                             "give each output its own path"):
            output.check_outputs({"--json": tmp_path / "m.json", "--csv": other, "--trace": None})
    output.check_outputs({"--json": tmp_path / "m.json", "--csv": tmp_path / "m.csv"})
    output.check_outputs({"--json": os.devnull, "--csv": os.devnull})   # written into, not replaced: may share
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "sub"]


def test_an_output_may_not_replace_what_the_command_reads(tmp_path, monkeypatch):
    """``--resume ck.npz --metrics-json ck.npz`` said ck.npz stays as it is, then wrote JSON over it."""
    ck = tmp_path / "ck.npz"
    checkpoint.save(ck, model())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GpunnError, match=rf"--metrics-json \./ck.npz would replace {re.escape(str(ck))}, which --resume reads: "
                                         "give --metrics-json another path"):
        output.check_outputs({"--metrics-json": "./ck.npz"}, {"--resume": ck}, in_place={("--resume", "--save")})
    output.check_outputs({"--save": ck}, {"--resume": ck}, in_place={("--resume", "--save")})  # continued in place
    with pytest.raises(GpunnError, match="--metrics-json .* which --resume reads"):   # ... but nothing else there
        output.check_outputs({"--save": ck, "--metrics-json": ck}, {"--resume": ck}, in_place={("--resume", "--save")})
