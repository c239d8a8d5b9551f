"""MNIST-format data: reading IDX files, finding or downloading MNIST, batch order.

:func:`load_mnist` looks for the four MNIST files in the first of

1. the ``data_dir`` argument,
2. ``$GPUNN_DATA_DIR``,
3. the cache: ``cache_dir``, else ``$GPUNN_CACHE_DIR``, else
   ``$XDG_CACHE_HOME/gpunn/mnist``, else ``~/.cache/gpunn/mnist``.

A folder the user names (1, 2) may hold any MNIST-format data set (Fashion-MNIST,
KMNIST, ...), gzipped or not; its files are checked for structure only, and nothing is
ever downloaded into it.  The cache holds MNIST itself: each file is checked against the
SHA-256 of its decompressed bytes, and missing files are downloaded from :data:`MIRRORS`.

The order of samples in an epoch is a pure function of (seed, epoch)
(:func:`epoch_permutation`), so training resumes at any (epoch, step) without saved
random state.

Every problem with the data raises :class:`gpunn.errors.DataError` with a one-line
message that names the file or folder.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from gpunn import env
from gpunn.checks import is_integer
from gpunn.errors import DataError
from gpunn.inputs import read_regular

__all__ = [
    "MIRRORS", "MNIST_FILES", "Dataset", "batch_slices", "epoch_permutation",
    "load_mnist", "read_idx",
]

#: key -> (file name, md5 of the decompressed bytes, sha256 of the decompressed bytes).
#: Digests of the decompressed bytes hold for every mirror, whatever its gzip settings.
MNIST_FILES = {
    "train_images": (
        "train-images-idx3-ubyte.gz",
        "6bbc9ace898e44ae57da46a324031adb",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    "train_labels": (
        "train-labels-idx1-ubyte.gz",
        "a25bea736e30d166cdddb491f175f624",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    "test_images": (
        "t10k-images-idx3-ubyte.gz",
        "2646ac647ad5339dbf082846283269ea",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    "test_labels": (
        "t10k-labels-idx1-ubyte.gz",
        "27ae3e4e09519cfbb04c329615203637",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
}

#: Base URLs tried in turn for each missing file (``load_mnist(mirrors=...)`` overrides).
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
]

#: Seconds to wait for a mirror to connect or to send the next chunk.
DOWNLOAD_TIMEOUT = 30.0
# The most bytes gpunn reads from one data file, or lets one inflate to, or downloads (MNIST's
# largest file is 47 MB uncompressed): no file, however crafted, takes more memory than this.
MAX_FILE_BYTES = 1 << 31

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UINT8 = 0x08
_IDX_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
                   0x0D: "float32", 0x0E: "float64"}


# ---------------------------------------------------------------------------- IDX


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (type code 0x08, 1 to 4 dimensions).

    The file may be raw or gzip-compressed; gzip is recognised by its magic bytes, not
    by the name.  Returns a read-only uint8 array shaped by the header's dimensions.
    Raises DataError, naming the file, when it is missing, not gzip though named
    ``.gz``, a corrupt gzip stream, not IDX, not uint8, or when the data after the
    header is not exactly as long as the dimensions say.
    """
    path = Path(path)
    return _parse_idx(_decompress(_read_file(path), str(path)), str(path))


def _read_file(path: Path) -> bytes:
    """The bytes of the data file ``path``: a regular file (a FIFO or a device is refused before
    it is read) of at most :data:`MAX_FILE_BYTES`."""
    try:
        return read_regular(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({_one_line(e.strerror or e)})") from None


def _declared_size(head: bytes) -> int | None:
    """Header plus data bytes that a complete IDX header ``head`` declares; None when ``head`` is
    not one (``_parse_idx`` then says what is wrong)."""
    if len(head) < 4 or head[:2] != b"\0\0" or not 1 <= head[3] <= 4 or len(head) < 4 + 4 * head[3]:
        return None
    items = 1
    for i in range(head[3]):
        items *= int.from_bytes(head[4 + 4 * i:8 + 4 * i], "big")
    return 4 + 4 * head[3] + items


def _decompress(data: bytes, where: str) -> bytes:
    """The decompressed bytes of gzip ``data``, or ``data`` itself when it is not gzip.

    gzip is decompressed as a stream, and no further than the IDX header inside says the
    file holds, plus one byte to tell trailing data: a small file that inflates to gigabytes
    costs no more memory than what its header declares (at most :data:`MAX_FILE_BYTES`)."""
    if not data:
        raise DataError(f"{where}: empty file")
    if data[:2] != _GZIP_MAGIC:
        if where.endswith(".gz"):
            raise DataError(f"{where}: named .gz but is not gzip data "
                            f"(starts with {data[:4].hex(' ')}, gzip starts with 1f 8b)")
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            out = stream.read(4)
            if len(out) == 4 and 1 <= out[3] <= 4:
                out += stream.read(4 * out[3])
            size = _declared_size(out)
            if size is None:
                return out  # not an IDX header: _parse_idx names what is wrong
            if size > MAX_FILE_BYTES:
                raise DataError(f"{where}: the IDX header declares {size:,} bytes, more than the "
                                f"{MAX_FILE_BYTES:,} gpunn reads from one file")
            out += stream.read(size - len(out))
            if len(out) == size and stream.read(1):
                raise DataError(f"{where}: trailing bytes: the IDX header declares {size - 4 - 4 * out[3]:,} "
                                f"data bytes, and the gzip data holds more")
            return out
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: corrupt or truncated gzip data ({_one_line(e)})") from None


def _parse_idx(data: bytes, where: str) -> np.ndarray:
    """The uint8 array that the IDX bytes ``data`` hold (``where`` names them in errors)."""
    if len(data) < 4:
        raise DataError(f"{where}: too short for an IDX header ({len(data)} bytes)")
    code, ndim = data[2], data[3]
    if data[:2] != b"\0\0" or code not in _IDX_TYPE_NAMES:
        raise DataError(f"{where}: not an IDX file (starts with {data[:4].hex(' ')}, "
                        f"IDX starts with 00 00 <type> <ndim>)")
    if code != _IDX_UINT8:
        raise DataError(f"{where}: IDX type 0x{code:02x} ({_IDX_TYPE_NAMES[code]}) is not "
                        f"supported; only unsigned bytes (0x08)")
    if not 1 <= ndim <= 4:
        raise DataError(f"{where}: IDX header gives {ndim} dimensions; expected 1 to 4")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header ({ndim} dimensions need {header} "
                        f"bytes, file has {len(data)})")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected, actual = int(np.prod(dims, dtype=object)), len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else f"{actual - expected} trailing bytes"
        raise DataError(f"{where}: {what}: dimensions {' x '.join(map(str, dims))} need "
                        f"{expected} data bytes, file has {actual}")
    return np.frombuffer(data, np.uint8, count=expected, offset=header).reshape(dims)


# ---------------------------------------------------------------------------- Dataset


@dataclass
class Dataset:
    """A classification data set, split into train and test, ready for training.

    ``train_x``/``test_x`` are float32 ``(N, features)`` scaled to [0, 1];
    ``train_y``/``test_y`` are int32 ``(N,)`` class indices in ``0..num_classes-1``.
    ``name`` is ``"mnist"`` for byte-exact MNIST, else the folder's name; ``source`` is
    the folder the files were read from.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    name: str = ""
    source: str = ""

    @property
    def num_features(self) -> int:
        """Inputs per sample (784 for MNIST)."""
        return self.train_x.shape[1]


def load_mnist(data_dir=None, *, download=True, cache_dir=None, train_samples=None,
               test_samples=None, num_classes=10, progress=True,
               mirrors: Sequence[str] | None = None, train=True) -> Dataset:
    """Load MNIST (or any MNIST-format data set) as a :class:`Dataset`.

    Looks in ``data_dir``, else ``$GPUNN_DATA_DIR``, else the cache (see the module
    docstring).  A named folder must hold all four files (``.gz`` or uncompressed); they
    are checked for structure, not checksums.  Cached files must match MNIST's SHA-256;
    missing ones are downloaded (if ``download``) from ``mirrors`` (default
    :data:`MIRRORS`) into a temporary file, verified, and moved into place, with a
    progress bar when ``progress`` and stderr is a terminal.

    ``train_samples``/``test_samples`` keep the first N samples of each split (all of
    them when N is larger).  Labels must lie in ``0..num_classes-1``.  ``train=False``
    reads (and downloads) only the test files, for evaluation: the training split is then
    empty, with the test images' width.
    Raises DataError (one line, naming the file or folder) for any data problem and
    ValueError for bad arguments.
    """
    train_samples = _check_limit("train_samples", train_samples)
    test_samples = _check_limit("test_samples", test_samples)
    if not is_integer(num_classes) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if data_dir is None and os.environ.get("GPUNN_DATA_DIR"):
        data_dir, origin = os.environ["GPUNN_DATA_DIR"], " (from GPUNN_DATA_DIR)"
    else:
        origin = ""
    keys = [k for k in MNIST_FILES if train or k.startswith("test_")]
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        files = _read_folder(folder, origin, keys)
        exact = all(_sha256(data) == MNIST_FILES[key][2] for key, (_, data) in files.items())
        name = "mnist" if exact else folder.resolve().name
    else:
        folder = _cache_folder(cache_dir)
        files = _read_cache(folder, download, MIRRORS if mirrors is None else mirrors, progress, keys)
        name = "mnist"
    test_x, test_y = _split(files, "test", num_classes, test_samples)
    if train:
        train_x, train_y = _split(files, "train", num_classes, train_samples)
    else:
        train_x, train_y = np.empty((0, test_x.shape[1]), np.float32), np.empty(0, np.int32)
    if train_x.shape[1] != test_x.shape[1]:
        raise DataError(f"{files['train_images'][0]} holds images of {train_x.shape[1]} pixels "
                        f"but {files['test_images'][0]} of {test_x.shape[1]}")
    return Dataset(train_x, train_y, test_x, test_y, int(num_classes), name, str(folder))


def _split(files, split: str, num_classes: int, limit: int | None):
    """(x, y) of one split, after checking that its images and labels fit together."""
    image_path, image_bytes = files[f"{split}_images"]
    label_path, label_bytes = files[f"{split}_labels"]
    images = _parse_idx(image_bytes, image_path)
    labels = _parse_idx(label_bytes, label_path)
    if images.ndim != 3 or 0 in images.shape:
        raise DataError(f"{image_path}: images must be 3-D (count, rows, cols) and non-empty, "
                        f"got shape {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: labels must be 1-D, got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{image_path} holds {len(images)} images but {label_path} holds "
                        f"{len(labels)} labels")
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{label_path}: label {labels[i]} at index {i} is outside "
                        f"0..{num_classes - 1} ({bad.size} labels out of range)")
    n = len(images) if limit is None else min(limit, len(images))
    x = _UNIT[images[:n].reshape(n, -1)]  # = astype(float32) / 255, value for value, 5x faster
    return x, labels[:n].astype(np.int32)


#: each byte's pixel value in [0, 1]: float32(v) / 255, as a 256-entry table
_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def _check_limit(name: str, value):
    if value is not None and (not is_integer(value) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return None if value is None else int(value)


# ---------------------------------------------------------------------------- folders


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name`` or its uncompressed twin (``name`` without ``.gz``), if present."""
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.exists():  # a FIFO or a device too: reading it then says what it is
            return candidate
    return None


def _read_folder(folder: Path, origin: str, keys=tuple(MNIST_FILES)):
    """key -> (path, decompressed bytes) of ``keys`` in a folder the user named; never downloads."""
    if not folder.is_dir():
        if folder.exists():
            raise DataError(f"{folder}{origin} is a file, not a folder; give the folder that holds the MNIST files")
        raise DataError(f"{folder}{origin}: no such folder")
    found = {key: _find(folder, MNIST_FILES[key][0]) for key in keys}
    missing = [MNIST_FILES[key][0] for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"{folder}{origin} lacks {', '.join(missing)} "
                        f"(each may also be uncompressed, without .gz)")
    return {key: (str(p), _decompress(_read_file(p), str(p))) for key, p in found.items()}


def _cache_folder(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else env.mnist_cache_dir()


def _how_to_get() -> str:
    names = ", ".join(name for name, _, _ in MNIST_FILES.values())
    return f"download the four files ({names}) and pass --data-dir DIR or set GPUNN_DATA_DIR"


def _cache_unwritable(folder: Path, e: OSError) -> DataError:
    return DataError(f"cannot write to the MNIST cache {folder} ({_one_line(e.strerror or e)}); "
                     f"{_how_to_get()}")


def _read_cache(folder: Path, download: bool, mirrors, progress: bool, keys=tuple(MNIST_FILES)):
    """key -> (path, decompressed bytes) of ``keys`` from the cache, downloading what is missing."""
    files, missing = {}, []
    for key in keys:
        name, _, sha256 = MNIST_FILES[key]
        path = _find(folder, name)
        if path is not None:
            try:
                data = _decompress(_read_file(path), str(path))
                got = _sha256(data)
                problem = None if got == sha256 else (
                    f"{path}: SHA-256 of the decompressed bytes is {got}, expected {sha256}")
            except DataError as e:
                problem = str(e)
            if problem is None:
                files[key] = (str(path), data)
                continue
            # Never deleted: gpunn moves a download into place only once its SHA-256 is right, so
            # a file here that is not MNIST is not gpunn's (a Fashion-MNIST of the user's, say).
            raise DataError(f"{problem}; gpunn did not write it and leaves it as it is: to use it, pass "
                            f"--data-dir {folder} (or set GPUNN_DATA_DIR); to download MNIST, move it away")
        missing.append(key)
    if missing and not download:
        names = ", ".join(MNIST_FILES[key][0] for key in missing)
        raise DataError(f"MNIST is not in {folder} (missing {names}) and downloading is off; "
                        f"{_how_to_get()}")
    if missing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cache_unwritable(folder, e) from None
    for key in missing:
        files[key] = _download(key, folder, mirrors, progress)
    return files


# ---------------------------------------------------------------------------- download


def _download(key: str, folder: Path, mirrors, progress: bool):
    """Fetch one MNIST file into ``folder`` from the first mirror that serves it intact.

    Each attempt writes a temporary file in ``folder``, checks the SHA-256 of its
    decompressed bytes and only then renames it into place, so the cache never holds a
    partial or wrong file.  Returns (path, decompressed bytes).
    """
    name, _, sha256 = MNIST_FILES[key]
    mirrors = [mirrors] if isinstance(mirrors, str) else list(mirrors)
    reason = "no download mirrors are configured"
    for base in mirrors:
        url = base.rstrip("/") + "/" + name
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        except OSError as e:
            raise _cache_unwritable(folder, e) from None
        try:
            with os.fdopen(fd, "wb") as out:
                _fetch(url, out, name, progress)
            data = _decompress(Path(tmp).read_bytes(), url)
            got = _sha256(data)
            if got != sha256:
                reason = f"{url}: SHA-256 of the decompressed bytes is {got}, expected {sha256}"
                continue
            os.replace(tmp, folder / name)
            return str(folder / name), data
        except DataError as e:
            reason = str(e)
        except (OSError, http.client.HTTPException, ValueError) as e:
            reason = f"{url}: {_describe(e)}"
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone already once renamed into place
    tried = f"{len(mirrors)} mirror{'s' * (len(mirrors) != 1)} tried, last: " if mirrors else ""
    raise DataError(f"MNIST is not in {folder} and could not be downloaded "
                    f"({tried}{_one_line(reason)}); {_how_to_get()}")


def _fetch(url: str, out, name: str, progress: bool) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "gpunn"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
        show = progress and sys.stderr is not None and sys.stderr.isatty()
        with tqdm(total=response.length, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=name, leave=False, disable=not show) as bar:
            written = 0
            while chunk := response.read(1 << 16):
                written += len(chunk)
                if written > MAX_FILE_BYTES:
                    raise ValueError(f"more than the {MAX_FILE_BYTES:,} bytes gpunn downloads for one file")
                out.write(chunk)
                bar.update(len(chunk))


def _describe(e) -> str:
    """A short reason for a failed download attempt."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason  # the underlying error (refused, name lookup, timeout) or a string
    if isinstance(e, TimeoutError):
        return f"timed out after {DOWNLOAD_TIMEOUT:g} s"
    if isinstance(e, OSError) and e.strerror:
        return _one_line(e.strerror)
    return _one_line(e) or type(e).__name__


# ---------------------------------------------------------------------------- batches


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order (int64 indices) in which to visit ``n`` samples in ``epoch``.

    A pure function of its arguments, drawn from ``np.random.default_rng([seed, epoch])``:
    a run resumed at (epoch, step) rebuilds the same order without saved RNG state.
    ``n``, ``seed`` and ``epoch`` must be non-negative integers.
    """
    for arg, value in (("n", n), ("seed", seed), ("epoch", epoch)):
        if not is_integer(value) or value < 0:
            raise ValueError(f"epoch_permutation: {arg} must be a non-negative integer, "
                             f"got {value!r}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    return rng.permutation(int(n)).astype(np.int64, copy=False)


def batch_slices(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of each batch over ``n`` samples, in order; the last may be short.

    ``batch_size`` must be >= 1 (ValueError, raised at the call); one larger than ``n``
    gives a single batch, and ``n == 0`` gives none.
    """
    if not is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not is_integer(n) or n < 0:
        raise ValueError(f"batch_slices: n must be a non-negative integer, got {n!r}")
    n, batch_size = int(n), int(batch_size)
    return ((start, min(start + batch_size, n)) for start in range(0, n, batch_size))


# ---------------------------------------------------------------------------- helpers


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(text) -> str:
    return " ".join(str(text).split())
