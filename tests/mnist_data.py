"""The real MNIST for tests: the first of $GPUNN_DATA_DIR, the repository's sibling
../shared/data/mnist, and the cache that ``gpunn train`` downloads into (so a user who ran
the quick start gets these tests)."""
import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def _has_files(d: Path) -> bool:
    return (d / "train-images-idx3-ubyte.gz").exists() or (d / "train-images-idx3-ubyte").exists()


def mnist_dir():
    d = os.environ.get("GPUNN_DATA_DIR")
    if d:
        return Path(d)
    from gpunn.data import _cache_folder

    for candidate in (SHARED, _cache_folder(None)):
        if _has_files(candidate):
            return candidate
    return SHARED


def has_mnist():
    return _has_files(mnist_dir())


#: for tests that read the real MNIST: they say why they did not run when it is absent
needs_mnist = pytest.mark.skipif(not has_mnist(), reason=f"real MNIST not found in {mnist_dir()} or the gpunn cache "
                                                          "(set GPUNN_DATA_DIR)")
