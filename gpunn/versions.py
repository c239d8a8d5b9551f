"""A user's version of an op, loaded from their file: the loading half of :mod:`gpunn.lab`.

``load_version("FILE.py:NAME", op)`` imports FILE.py afresh and checks that NAME takes the op's
arguments in its record's order; ``declared_kernels(FILE.py)`` reads the file's ``KERNELS``.
Every mistake in the file is a :class:`VersionError`: one line naming the file and the version.
(``gpunn.bench``, ``gpunn.ptx`` and the options read this module; :mod:`gpunn.lab` is the
public face over it and them.)
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Callable

from gpunn.backend.base import check_arity
from gpunn.backend.ops import OPS
from gpunn.errors import GpunnError



class VersionError(GpunnError):
    """A user's version file cannot be used: it does not import, lacks the version, or its version
    cannot take the op's arguments or raised."""


@dataclass(frozen=True)
class UserVersion:
    """A user's version of ``op``: ``fn`` called ``name`` in the file ``path``."""

    op: str
    name: str
    path: str
    fn: Callable

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.name}"


def op_named(word: str) -> str:
    """The op called ``word`` (``softmax-cross-entropy`` or ``softmax_cross_entropy``)."""
    name = word.replace("-", "_")
    if name not in OPS:
        raise VersionError(f"unknown op {word!r}; the ops are {', '.join(o.word for o in OPS.values())}")
    return name


def load_file(path: str):
    """The module in the Python file ``path``, imported afresh under a name of its own."""
    path = os.fspath(path)
    if not path.endswith(".py"):
        raise VersionError(f"{path}: a version file is a Python file (FILE.py)")
    if not os.path.isfile(path):
        raise VersionError(f"{path}: no such file")
    name = "gpunn_user_" + hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # numba (and dataclasses) look a function's module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # anything the file raises: it is the user's code
        sys.modules.pop(name, None)
        raise VersionError(f"{path}: cannot import it: {one_line(exc)}") from None
    return module


def load_version(text: str, op: str) -> UserVersion:
    """``"FILE.py:NAME"`` -> the version ``NAME`` of ``op`` defined in FILE.py, checked to take the
    op's arguments in order."""
    op = op_named(op)
    path, sep, name = text.rpartition(":")
    if not sep or not path or not name.isidentifier():
        raise VersionError(f"version {text!r}: expected FILE.py:NAME (a function in a Python file)")
    fn = getattr(load_file(path), name, None)
    if fn is None:
        raise VersionError(f"{path}: defines no {name!r}")
    if not callable(fn):
        raise VersionError(f"{path}:{name} is a {type(fn).__name__}, not a function")
    try:
        check_arity(OPS[op], fn, f"{path}:{name}")
    except ValueError as exc:
        raise VersionError(str(exc)) from None
    return UserVersion(op, name, path, fn)


def declared_kernels(path: str) -> list:
    """The kernels the file ``path`` declares in ``KERNELS = [(kernel, signature(s), threads), ...]``,
    as :class:`gpunn.kernels.launch.KernelSpec` records (what ``gpunn kernels FILE.py`` compiles)."""
    from gpunn.kernels.launch import KernelSpec

    declared = getattr(load_file(path), "KERNELS", None)
    example = 'KERNELS = [(my_kernel, "void(float32[:, ::1], float32[:, ::1])", 128)]'
    if not isinstance(declared, (list, tuple)) or not declared:
        raise VersionError(f"{path}: declares no kernels; add, at the end of the file: {example}")
    specs = []
    for i, entry in enumerate(declared):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise VersionError(f"{path}: KERNELS[{i}] is not (kernel, signature, threads per block): {example}")
        kernel, signatures, block = entry
        if not hasattr(kernel, "py_func"):
            raise VersionError(f"{path}: KERNELS[{i}][0] is not a @cuda.jit kernel")
        signatures = (signatures,) if isinstance(signatures, str) else tuple(signatures)
        if not signatures or not all(isinstance(s, str) for s in signatures):
            raise VersionError(f"{path}: KERNELS[{i}][1] must be a Numba signature string (or a list of them), "
                               'e.g. "void(float32[:, ::1], float32[:, ::1])"')
        if isinstance(block, bool) or not isinstance(block, int) or not 1 <= block <= 1024:
            raise VersionError(f"{path}: KERNELS[{i}][2] must be the threads per block, 1 to 1024, got {block!r}")
        specs.append(KernelSpec(kernel.py_func.__name__, kernel, signatures, block, 0, os.path.basename(path)))
    return specs


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1]}" if text else type(exc).__name__
