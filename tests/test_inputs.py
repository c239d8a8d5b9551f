"""gpunn.inputs: an untrusted file is read only if it is a regular file, and never without a bound."""
import os
import threading

import pytest

from conftest import char_device, needs_mknod
from gpunn.inputs import NotRegularFile, TooLarge, open_regular, read_regular


def test_a_regular_file_reads_whole_or_up_to_its_limit(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abcdef")
    assert read_regular(p) == b"abcdef"
    assert read_regular(p, limit=6) == b"abcdef"
    with pytest.raises(TooLarge, match="larger than the 5 bytes allowed"):
        read_regular(p, limit=5)


def test_a_fifo_is_refused_at_once_not_read_forever(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    done = []

    def read():
        try:
            read_regular(fifo)
        except NotRegularFile as exc:
            done.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO hung"
    assert done and "a FIFO, not a regular file" in done[0].strerror


@needs_mknod
def test_a_character_device_is_refused(tmp_path):
    dev = char_device(tmp_path / "zero", 5)  # /dev/zero: reads without end
    with pytest.raises(NotRegularFile, match="a character device, not a regular file"):
        read_regular(dev)


def test_a_folder_and_a_missing_file(tmp_path):
    with pytest.raises(NotRegularFile, match="a folder, not a regular file"):
        open_regular(tmp_path)
    with pytest.raises(FileNotFoundError):
        open_regular(tmp_path / "missing")


def test_links_are_followed_unless_told_not_to(tmp_path):
    (tmp_path / "target").write_bytes(b"x")
    os.symlink(tmp_path / "target", tmp_path / "link")
    assert read_regular(tmp_path / "link") == b"x"
    with pytest.raises(NotRegularFile, match="a symbolic link"):
        read_regular(tmp_path / "link", follow_links=False)
