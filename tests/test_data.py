"""Tests for gpunn.data: IDX reading, load_mnist's folders, cache and downloads, batch order.

Downloads are served by a local HTTP server on 127.0.0.1 holding small fake MNIST-format
files (their digests are patched into MNIST_FILES); no test reaches the internet.  The
real-MNIST test reads the byte-exact copy in ../shared/data/mnist (or $GPUNN_DATA_DIR).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from conftest import char_device, needs_mknod, within
from gpunn import data
from gpunn.data import Dataset, batch_slices, epoch_permutation, load_mnist, read_idx
from gpunn.errors import DataError, GpunnError

REAL_MNIST = (Path(os.environ["GPUNN_DATA_DIR"]) if os.environ.get("GPUNN_DATA_DIR")
              else Path(__file__).resolve().parents[2] / "shared/data/mnist")
REAL_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
REAL_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
NAMES = {key: name for key, (name, _, _) in data.MNIST_FILES.items()}


# ---------------------------------------------------------------------------- helpers


def idx(array, code=0x08) -> bytes:
    """The IDX bytes of ``array`` (uint8 payload, big-endian dims)."""
    array = np.asarray(array, np.uint8)
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return b"\0\0" + bytes([code, array.ndim]) + dims + array.tobytes()


def write(path: Path, raw: bytes, compress: bool | None = None) -> Path:
    """Write ``raw`` to ``path``, gzipped when ``compress`` (default: when named .gz)."""
    compress = path.name.endswith(".gz") if compress is None else compress
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


def fake_mnist(seed=0, n_train=30, n_test=12, rows=4, cols=3, labels=10, shift=0):
    """key -> decompressed IDX bytes of a small MNIST-format data set."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"{split}_images"] = idx(rng.integers(0, 256, (n, rows, cols)))
        out[f"{split}_labels"] = idx((np.arange(n) + shift) % labels)
    return out


def write_mnist(folder: Path, files: dict, compress=True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for key, raw in files.items():
        write(folder / (NAMES[key] if compress else NAMES[key][:-3]), raw, compress)
    return folder


def digests(files: dict) -> dict:
    return {key: (NAMES[key], hashlib.md5(raw).hexdigest(), hashlib.sha256(raw).hexdigest())
            for key, raw in files.items()}


def data_error(call, *fragments) -> str:
    """Run ``call``, expect a one-line DataError containing every fragment; return it."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert str(fragment) in message
    return message


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def cache_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------- fixtures

GOOD = fake_mnist(seed=1)
OTHER = fake_mnist(seed=2, shift=1)  # valid MNIST format, every checksum wrong


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test sees the caller's data folders or cache, or reaches a real mirror."""
    monkeypatch.delenv("GPUNN_DATA_DIR", raising=False)
    monkeypatch.delenv("GPUNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(data, "MIRRORS", [closed_port_url()])


@pytest.fixture
def good_hashes(monkeypatch):
    """MNIST_FILES with the digests of GOOD, so GOOD counts as MNIST."""
    for key, entry in digests(GOOD).items():
        monkeypatch.setitem(data.MNIST_FILES, key, entry)


class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Base URL of a loopback HTTP server with mirrors good/, bad/ (wrong bytes),
    html/ (an error page under each name) and empty/ (404 for everything)."""
    root = tmp_path_factory.mktemp("mirrors")
    write_mnist(root / "good", GOOD)
    write_mnist(root / "bad", OTHER)
    (root / "empty").mkdir()
    (root / "html").mkdir()
    for name in NAMES.values():
        (root / "html" / name).write_bytes(b"<html>Access denied</html>")
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def requests(server):
    """Paths requested from the server during this test."""
    _Handler.requests.clear()
    return _Handler.requests


# ---------------------------------------------------------------------------- read_idx


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)])
def test_read_idx_raw_and_gzip(tmp_path, shape):
    array = np.arange(np.prod(shape)).reshape(shape) % 256
    for name in ("a.idx", "a.idx.gz"):
        got = read_idx(write(tmp_path / name, idx(array)))
        assert got.dtype == np.uint8 and got.shape == shape
        np.testing.assert_array_equal(got, array)


def test_read_idx_detects_gzip_by_magic_not_name(tmp_path):
    array = np.arange(12).reshape(3, 4)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "plain-name", idx(array), True)), array)
    np.testing.assert_array_equal(read_idx(str(write(tmp_path / "x.bin", idx(array)))), array)


def test_read_idx_missing_file(tmp_path):
    data_error(lambda: read_idx(tmp_path / "nope.gz"), tmp_path / "nope.gz", "no such file")


def test_read_idx_truncated_payload(tmp_path):
    path = write(tmp_path / "t.gz", idx(np.zeros((4, 5)))[:-3])
    data_error(lambda: read_idx(path), path, "truncated", "20", "17")


def test_read_idx_trailing_bytes(tmp_path):
    path = write(tmp_path / "t", idx(np.zeros((4, 5))) + b"xyz")
    data_error(lambda: read_idx(path), path, "3 trailing bytes", "20", "23")


def test_read_idx_gzip_trailing_bytes(tmp_path):
    path = write(tmp_path / "t.gz", idx(np.zeros((4, 5))) + b"xyz")
    data_error(lambda: read_idx(path), path, "trailing bytes", "declares 20 data bytes")


def test_read_idx_header_declaring_more_than_the_limit(tmp_path):
    path = write(tmp_path / "t.gz", b"\0\0\x08\x03" + (4096).to_bytes(4, "big") * 3)
    data_error(lambda: read_idx(path), path, "declares 68,719,476,752 bytes", f"{data.MAX_FILE_BYTES:,}")


_BOMB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))  # 1 GiB of address space in all
from gpunn.data import read_idx
from gpunn.errors import DataError
try:
    read_idx(sys.argv[1])
except DataError as e:
    print(e)
"""


def test_a_gzip_bomb_inflates_no_further_than_its_header_says(tmp_path):
    # 3 KB of gzip: the header of 10 x 28 x 28 images, then 4 GiB of zeros (64 members of 64 MiB).
    member = gzip.compress(bytes(64 << 20), compresslevel=1, mtime=0)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx(np.zeros((10, 28, 28))), mtime=0) + member * 64)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", _BOMB, str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert "trailing bytes: the IDX header declares 7,840 data bytes" in proc.stdout


def test_a_fifo_or_device_as_a_data_file_is_refused_not_read(tmp_path):
    folder = write_mnist(tmp_path / "d", GOOD)
    target = folder / NAMES["train_images"]
    target.unlink()
    os.mkfifo(target)
    message = within(10, lambda: data_error(lambda: load_mnist(folder, download=False), target))
    assert "a FIFO, not a regular file" in message


@needs_mknod
def test_a_zero_device_as_a_cached_file_is_refused(tmp_path, good_hashes):
    cache = write_mnist(tmp_path / "c", GOOD)
    target = cache / NAMES["test_labels"]
    target.unlink()
    char_device(target, 5)  # /dev/zero: reads without end
    message = within(10, lambda: data_error(lambda: load_mnist(cache_dir=cache, download=False), target))
    assert "a character device, not a regular file" in message and target.exists()


@pytest.mark.parametrize("head, fragment", [
    (b"\x01\x00\x08\x01", "not an IDX file"),
    (b"PK\x03\x04", "not an IDX file"),
    (b"\x00\x00\x07\x01", "not an IDX file"),
    (b"\x00\x00\x0d\x01", "0x0d (float32) is not supported"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x05", "5 dimensions"),
])
def test_read_idx_bad_header(tmp_path, head, fragment):
    path = write(tmp_path / "h", head + (1).to_bytes(4, "big") * 5 + b"\0")
    data_error(lambda: read_idx(path), path, fragment)


@pytest.mark.parametrize("raw, fragment", [
    (b"", "empty file"),
    (b"\0\0", "too short for an IDX header"),
    (b"\0\0\x08\x03" + (2).to_bytes(4, "big"), "truncated IDX header"),
])
def test_read_idx_short_files(tmp_path, raw, fragment):
    path = write(tmp_path / "s", raw)
    data_error(lambda: read_idx(path), path, fragment)


def test_read_idx_gz_name_but_not_gzip(tmp_path):
    path = write(tmp_path / "train-images-idx3-ubyte.gz", idx(np.zeros(3)), compress=False)
    data_error(lambda: read_idx(path), path, "not gzip")


@pytest.mark.parametrize("damage", ["truncate", "flip-body", "flip-crc"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
    packed = bytearray(gzip.compress(idx(np.random.default_rng(0).integers(0, 256, 4000)), mtime=0))
    if damage == "truncate":
        packed = packed[: len(packed) // 2]
    elif damage == "flip-body":
        packed[len(packed) // 2] ^= 0xFF
    else:
        packed[-6] ^= 0xFF
    path = tmp_path / "c.gz"
    path.write_bytes(bytes(packed))
    data_error(lambda: read_idx(path), path, "gzip")


# ---------------------------------------------------------------------------- a named folder


@pytest.mark.parametrize("compress", [True, False])
def test_load_from_data_dir(tmp_path, compress):
    folder = write_mnist(tmp_path / "fashion", GOOD, compress)
    ds = load_mnist(folder, progress=False)
    assert isinstance(ds, Dataset)
    assert ds.train_x.shape == (30, 12) and ds.test_x.shape == (12, 12) and ds.num_features == 12
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.test_x.dtype == np.float32 and ds.test_y.dtype == np.int32
    images = np.frombuffer(GOOD["train_images"], np.uint8, offset=16).reshape(30, 12)
    np.testing.assert_array_equal(ds.train_x, images.astype(np.float32) / np.float32(255))
    assert 0 <= ds.train_x.min() and ds.train_x.max() <= 1
    np.testing.assert_array_equal(ds.train_y, np.arange(30) % 10)
    assert ds.num_classes == 10
    assert ds.name == "fashion"  # checksums are not MNIST's, and that is fine here
    assert ds.source == str(folder)


def test_data_dir_with_mnist_checksums_is_named_mnist(tmp_path, good_hashes):
    assert load_mnist(write_mnist(tmp_path / "d", GOOD)).name == "mnist"


def test_data_dir_mixed_compression(tmp_path):
    folder = write_mnist(tmp_path / "d", {k: v for k, v in GOOD.items() if "train" in k})
    write_mnist(folder, {k: v for k, v in GOOD.items() if "test" in k}, compress=False)
    assert load_mnist(folder).test_x.shape == (12, 12)


def test_data_dir_missing_files_is_an_error_and_never_downloads(tmp_path, server, requests):
    folder = write_mnist(tmp_path / "d", {"train_images": GOOD["train_images"]})
    message = data_error(lambda: load_mnist(folder, mirrors=[server + "good/"]),
                         folder, NAMES["train_labels"], NAMES["test_images"],
                         NAMES["test_labels"])
    assert NAMES["train_images"] + "," not in message
    assert requests == [] and cache_listing(folder) == [NAMES["train_images"]]


def test_data_dir_absent(tmp_path):
    data_error(lambda: load_mnist(tmp_path / "nowhere"), tmp_path / "nowhere", "no such folder")


def test_env_data_dir_is_used_and_explicit_argument_wins(tmp_path, monkeypatch):
    env_folder = write_mnist(tmp_path / "env", GOOD)
    arg_folder = write_mnist(tmp_path / "arg", fake_mnist(seed=3, n_train=5, n_test=4))
    monkeypatch.setenv("GPUNN_DATA_DIR", str(env_folder))
    assert load_mnist().source == str(env_folder)
    assert load_mnist(arg_folder).train_x.shape == (5, 12)


def test_env_data_dir_missing_files_names_the_variable(tmp_path, monkeypatch, server, requests):
    monkeypatch.setenv("GPUNN_DATA_DIR", str(tmp_path))
    data_error(lambda: load_mnist(mirrors=[server + "good/"]), tmp_path, "GPUNN_DATA_DIR",
               NAMES["test_labels"])
    assert requests == []


def test_label_out_of_range(tmp_path):
    files = dict(GOOD, test_labels=idx([1, 2, 3, 10, 4, 11, 0, 0, 0, 0, 0, 0]))
    folder = write_mnist(tmp_path / "d", files)
    path = folder / NAMES["test_labels"]
    data_error(lambda: load_mnist(folder), path, "label 10 at index 3", "0..9", "2 labels")


def test_num_classes(tmp_path):
    folder = write_mnist(tmp_path / "d", fake_mnist(labels=3))
    assert load_mnist(folder, num_classes=3).num_classes == 3
    data_error(lambda: load_mnist(folder, num_classes=2), "label 2 at index 2", "0..1")
    for bad in (1, 0, 2.0, True, None):
        with pytest.raises(ValueError):
            load_mnist(folder, num_classes=bad)


def test_image_and_label_counts_must_match(tmp_path):
    folder = write_mnist(tmp_path / "d", dict(GOOD, train_labels=idx(np.zeros(29))))
    data_error(lambda: load_mnist(folder), folder / NAMES["train_images"],
               folder / NAMES["train_labels"], "30 images", "29 labels")


@pytest.mark.parametrize("key, array, fragment", [
    ("train_images", np.zeros((30, 12)), "3-D"),
    ("test_images", np.zeros((12, 0, 3)), "3-D"),
    ("train_labels", np.zeros((30, 1)), "1-D"),
    ("test_images", np.zeros((12, 3, 3)), "12 pixels"),
])
def test_bad_shapes(tmp_path, key, array, fragment):
    folder = write_mnist(tmp_path / "d", dict(GOOD, **{key: idx(array)}))
    data_error(lambda: load_mnist(folder), fragment)


def test_corrupt_file_in_data_dir_names_it(tmp_path):
    folder = write_mnist(tmp_path / "d", GOOD)
    (folder / NAMES["test_images"]).write_bytes(gzip.compress(GOOD["test_images"])[:-20])
    data_error(lambda: load_mnist(folder), folder / NAMES["test_images"], "gzip")


def test_sample_limits(tmp_path):
    folder = write_mnist(tmp_path / "d", GOOD)
    full = load_mnist(folder)
    ds = load_mnist(folder, train_samples=7, test_samples=1000)
    np.testing.assert_array_equal(ds.train_x, full.train_x[:7])
    np.testing.assert_array_equal(ds.train_y, full.train_y[:7])
    assert len(ds.test_x) == len(ds.test_y) == 12
    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="train_samples"):
            load_mnist(folder, train_samples=bad)
        with pytest.raises(ValueError, match="test_samples"):
            load_mnist(folder, test_samples=bad)


# ---------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("where", ["argument", "GPUNN_CACHE_DIR", "XDG_CACHE_HOME", "HOME"])
def test_cache_dir_resolution(tmp_path, monkeypatch, good_hashes, where):
    folders = {
        "argument": tmp_path / "arg",
        "GPUNN_CACHE_DIR": tmp_path / "env",
        "XDG_CACHE_HOME": tmp_path / "xdg" / "gpunn" / "mnist",
        "HOME": tmp_path / "home" / ".cache" / "gpunn" / "mnist",
    }
    if where == "HOME":
        monkeypatch.delenv("XDG_CACHE_HOME")
    if where in ("argument", "GPUNN_CACHE_DIR"):
        monkeypatch.setenv("GPUNN_CACHE_DIR", str(folders["GPUNN_CACHE_DIR"]))
    write_mnist(folders[where], GOOD)
    ds = load_mnist(cache_dir=folders["argument"] if where == "argument" else None,
                    download=False)
    assert ds.source == str(folders[where]) and ds.name == "mnist"


def test_cache_file_with_wrong_checksum_is_refused_offline(tmp_path, good_hashes):
    cache = write_mnist(tmp_path / "c", dict(GOOD, test_labels=OTHER["test_labels"]))
    data_error(lambda: load_mnist(cache_dir=cache, download=False),
               cache / NAMES["test_labels"], "SHA-256", "leaves it as it is", f"--data-dir {cache}")
    data_error(lambda: load_mnist(cache_dir=tmp_path / "empty", download=False),
               "MNIST is not in", "downloading is off", "--data-dir", "GPUNN_DATA_DIR")


def test_download_into_empty_cache(tmp_path, good_hashes, server, requests):
    cache = tmp_path / "new" / "cache"
    ds = load_mnist(cache_dir=cache, mirrors=[server + "good"])  # progress on, stderr no tty
    assert sorted(requests) == sorted(f"/good/{name}" for name in NAMES.values())
    assert cache_listing(cache) == sorted(NAMES.values())  # no temporary files left
    for key, name in NAMES.items():
        assert gzip.decompress((cache / name).read_bytes()) == GOOD[key]
    np.testing.assert_array_equal(ds.train_x, load_mnist(cache).train_x)
    requests.clear()
    assert load_mnist(cache_dir=cache).name == "mnist"  # offline now: MIRRORS is closed
    assert requests == []


def test_download_only_what_is_missing(tmp_path, good_hashes, server, requests):
    cache = write_mnist(tmp_path / "c", {"train_images": GOOD["train_images"]})
    load_mnist(cache_dir=cache, mirrors=[server + "good/"], progress=False)
    assert sorted(requests) == sorted(f"/good/{NAMES[k]}" for k in ("train_labels", "test_images", "test_labels"))
    assert gzip.decompress((cache / NAMES["test_images"]).read_bytes()) == GOOD["test_images"]


@pytest.mark.parametrize("download", [True, False])
def test_a_file_that_is_not_mnist_is_refused_never_deleted(tmp_path, good_hashes, server, requests, download):
    # GPUNN_CACHE_DIR pointed at a folder of the user's own MNIST-format files (Fashion-MNIST, say):
    # gpunn wrote none of them, so it may read them or refuse them, never delete or replace them.
    cache = write_mnist(tmp_path / "mine", OTHER)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    message = data_error(lambda: load_mnist(cache_dir=cache, mirrors=[server + "good/"], progress=False,
                                            download=download),
                         "SHA-256", "leaves it as it is", f"--data-dir {cache}")
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
    assert requests == []
    assert load_mnist(cache, download=False).name != "mnist"  # and --data-dir reads them as they are


def test_bad_mirrors_are_skipped_and_bad_files_never_kept(tmp_path, good_hashes, server,
                                                          requests):
    cache = tmp_path / "c"
    mirrors = [server + "empty/", server + "html/", server + "bad/", server + "good/"]
    load_mnist(cache_dir=cache, mirrors=mirrors, progress=False)
    name = NAMES["train_images"]
    assert requests[:4] == [f"/{m}/{name}" for m in ("empty", "html", "bad", "good")]
    assert len(requests) == 16
    assert cache_listing(cache) == sorted(NAMES.values())
    for key, name in NAMES.items():
        assert gzip.decompress((cache / name).read_bytes()) == GOOD[key]


def test_checksum_mismatch_on_every_mirror(tmp_path, good_hashes, server, requests):
    cache = tmp_path / "c"
    message = data_error(
        lambda: load_mnist(cache_dir=cache, mirrors=[server + "html/", server + "bad/"]),
        f"MNIST is not in {cache} and could not be downloaded", "2 mirrors tried",
        "SHA-256", "--data-dir DIR", "GPUNN_DATA_DIR", *NAMES.values())
    assert server + "bad/" + NAMES["train_images"] in message
    assert cache_listing(cache) == []  # neither the bad file nor a temporary one
    assert len(requests) == 2  # gives up at the first file no mirror can serve


def test_offline_is_one_line_error_mentioning_data_dir(tmp_path, good_hashes):
    cache = tmp_path / "c"
    with pytest.raises(GpunnError) as info:
        load_mnist(cache_dir=cache)  # data.MIRRORS: a closed port on 127.0.0.1
    message = str(info.value)
    assert isinstance(info.value, DataError) and "\n" not in message
    assert "could not be downloaded" in message and "--data-dir" in message
    assert "Connection refused" in message
    assert cache_listing(cache) == []


def test_unusable_cache_folder(tmp_path, good_hashes):
    blocker = write(tmp_path / "file", b"x")
    data_error(lambda: load_mnist(cache_dir=blocker / "mnist"),
               f"cannot write to the MNIST cache {blocker / 'mnist'}", "--data-dir")


def test_no_mirrors(tmp_path, good_hashes):
    data_error(lambda: load_mnist(cache_dir=tmp_path, mirrors=[]), "no download mirrors")


# ---------------------------------------------------------------------------- batch order


def test_epoch_permutation_is_deterministic():
    p = epoch_permutation(1000, 42, 3)
    assert p.dtype == np.int64 and p.shape == (1000,)
    np.testing.assert_array_equal(np.sort(p), np.arange(1000))
    np.testing.assert_array_equal(p, epoch_permutation(1000, 42, 3))
    np.testing.assert_array_equal(p, np.random.default_rng([42, 3]).permutation(1000))
    assert not np.array_equal(p, epoch_permutation(1000, 42, 4))
    assert not np.array_equal(p, epoch_permutation(1000, 43, 3))
    np.testing.assert_array_equal(epoch_permutation(np.int64(1000), np.int32(42), 3), p)
    assert epoch_permutation(0, 0, 0).shape == (0,)


@pytest.mark.parametrize("args", [(-1, 0, 0), (5, -1, 0), (5, 0, -1), (5.0, 0, 0),
                                  (5, None, 0), (True, 0, 0)])
def test_epoch_permutation_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        epoch_permutation(*args)


def test_batch_slices_edge_cases():
    assert list(batch_slices(10, 3)) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert list(batch_slices(10, 5)) == [(0, 5), (5, 10)]
    assert list(batch_slices(10, 10)) == [(0, 10)]
    assert list(batch_slices(10, 64)) == [(0, 10)]
    assert list(batch_slices(1, 1)) == [(0, 1)]
    assert list(batch_slices(0, 4)) == []
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="batch_size"):
            batch_slices(10, bad)  # raised at the call, not when iterated
    with pytest.raises(ValueError):
        batch_slices(-1, 4)


@given(st.integers(0, 500), st.integers(1, 600))
def test_batch_slices_cover_every_index_once(n, batch_size):
    slices = list(batch_slices(n, batch_size))
    assert [i for start, stop in slices for i in range(start, stop)] == list(range(n))
    assert all(0 < stop - start <= batch_size for start, stop in slices)
    assert all(stop - start == batch_size for start, stop in slices[:-1])


# ---------------------------------------------------------------------------- real MNIST


def _real_file(name: str) -> Path:
    gz = REAL_MNIST / name
    return gz if gz.is_file() else REAL_MNIST / name.removesuffix(".gz")


@pytest.fixture(scope="module")
def real_mnist():
    """The real data set and (md5, sha256, size) of each file's decompressed bytes."""
    found = {}
    for key, name in NAMES.items():
        raw = _real_file(name).read_bytes()
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        found[key] = (hashlib.md5(raw).hexdigest(), hashlib.sha256(raw).hexdigest(), len(raw))
    return load_mnist(REAL_MNIST, download=False, progress=False), found


@pytest.mark.skipif(not REAL_MNIST.is_dir(),
                    reason=f"no local MNIST copy at {REAL_MNIST} (set GPUNN_DATA_DIR)")
def test_real_mnist(real_mnist):
    ds, found = real_mnist
    for key, (_, md5, sha256) in data.MNIST_FILES.items():
        assert found[key][:2] == (md5, sha256), key
    assert [found[k][2] for k in NAMES] == [47_040_016, 60_008, 7_840_016, 10_008]
    assert ds.name == "mnist" and ds.num_classes == 10 and ds.num_features == 784
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_x.dtype == np.float32 and ds.train_y.dtype == np.int32
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert np.bincount(ds.train_y, minlength=10).tolist() == REAL_TRAIN_COUNTS
    assert np.bincount(ds.test_y, minlength=10).tolist() == REAL_TEST_COUNTS


def test_the_tests_find_mnist_in_gpunns_own_cache(tmp_path, monkeypatch):
    """A user who ran the quick start has MNIST in the cache: the MNIST tests use it."""
    import mnist_data

    cache = tmp_path / "xdg" / "gpunn" / "mnist"
    write_mnist(cache, fake_mnist())
    monkeypatch.delenv("GPUNN_DATA_DIR", raising=False)
    monkeypatch.delenv("GPUNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(mnist_data, "SHARED", tmp_path / "no-shared-folder")
    assert mnist_data.mnist_dir() == cache and mnist_data.has_mnist()


def test_only_the_test_split_is_read_for_evaluation(tmp_path, monkeypatch):
    files = fake_mnist(n_test=12, rows=4, cols=3)
    folder = write_mnist(tmp_path / "d", files)
    for f in folder.glob("train-*"):
        f.unlink()
    d = load_mnist(folder, train=False)
    assert d.test_x.shape == (12, 12) and d.train_x.shape == (0, 12) and d.train_y.shape == (0,)
    with pytest.raises(DataError, match="lacks train-images-idx3-ubyte.gz"):
        load_mnist(folder)
    # the cache, offline: only the test files are looked for
    monkeypatch.setattr(data, "MNIST_FILES", digests(files))
    d = load_mnist(cache_dir=folder, download=False, train=False)
    assert d.test_x.shape == (12, 12) and d.name == "mnist"
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz"):
        load_mnist(cache_dir=folder, download=False)
