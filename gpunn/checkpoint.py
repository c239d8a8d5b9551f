"""Checkpoints: weights, optimizer state and training position in a pickle-free ``.npz``.

Layout: ``format`` (a string), ``meta`` (JSON: model config, training options,
epoch/step position), ``param/<i>`` and ``velocity/<i>`` arrays.  Loaded with
``allow_pickle=False``.  Written by :func:`gpunn.output.atomic_write`: to a temporary
file in the same folder, flushed, fsynced and renamed over the target, so a crash
mid-write leaves the previous checkpoint intact (a symlink is written through, a FIFO
or device written into).
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

from gpunn.errors import CheckpointError
from gpunn.output import atomic_write

FORMAT = "gpunn-checkpoint/1"


def save(path, model, optimizer=None, meta=None):
    """Write ``model``'s weights (and ``optimizer``'s velocities) with ``meta`` to ``path``."""
    be = model.backend
    arrays = {"format": np.array(FORMAT)}
    info = {"model": model.config(), **(meta or {})}
    arrays["meta"] = np.array(json.dumps(info))
    for i, p in enumerate(model.params):
        arrays[f"param/{i}"] = be.to_numpy(p)
    if optimizer is not None:
        for i, v in enumerate(optimizer.velocities):
            if v is not None:
                arrays[f"velocity/{i}"] = be.to_numpy(v)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path):
    """Read a checkpoint: returns ``(meta, params, velocities)`` as host arrays; CheckpointError if bad."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if magic != b"PK\x03\x04":  # not a zip archive: np.load would try (and refuse) a pickle
        raise CheckpointError(f"{path}: not a gpunn checkpoint (not an .npz archive"
                              f"{', an empty file' if not magic else ''})")
    try:
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            if "format" not in files or "meta" not in files:
                raise CheckpointError(f"{path}: not a gpunn checkpoint (no format/meta entries)")
            fmt = str(z["format"])
            if fmt != FORMAT:
                raise CheckpointError(f"{path}: unsupported checkpoint format {fmt!r} (expected {FORMAT})")
            meta = json.loads(str(z["meta"]))
            n = sum(1 for k in files if k.startswith("param/"))
            params = [z[f"param/{i}"] for i in range(n)]
            velocities = [z[f"velocity/{i}"] if f"velocity/{i}" in files else None for i in range(n)]
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: not a gpunn checkpoint, or truncated/corrupt ({type(exc).__name__}: {exc})") from None
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"{path}: checkpoint metadata has no model configuration")
    return meta, params, velocities


def _describe(c):
    if c.get("type") == "Dense":
        act = c.get("activation", "identity")
        return f"Dense({c.get('in')}→{c.get('out')}{'' if act == 'identity' else ', ' + act})"
    return f"{c.get('type')}({c.get('width')})"


def check_architecture(path, saved, model_config):
    """CheckpointError naming the first layer where the checkpoint and the model differ."""
    if len(saved) != len(model_config):
        raise CheckpointError(
            f"{path}: checkpoint has {len(saved)} layers, the model has {len(model_config)} "
            f"(checkpoint: {', '.join(map(_describe, saved))})")
    for i, (a, b) in enumerate(zip(saved, model_config)):
        if a != b:
            raise CheckpointError(f"{path}: layer {i} differs: checkpoint has {_describe(a)}, the model has {_describe(b)}")


def restore(path, model, optimizer=None):
    """Load a checkpoint into an existing model (and optimizer); returns its meta."""
    meta, params, velocities = load(path)
    check_architecture(path, meta["model"], model.config())
    be = model.backend
    if len(params) != len(model.params):
        raise CheckpointError(f"{path}: checkpoint has {len(params)} parameter arrays, the model {len(model.params)}")
    for i, (dst, src) in enumerate(zip(model.params, params)):
        if tuple(src.shape) != tuple(dst.shape) or src.dtype != np.float32:
            raise CheckpointError(f"{path}: parameter {i} is {src.dtype}{tuple(src.shape)}, the model needs float32{tuple(dst.shape)}")
        dst[...] = be.asarray(src)
    if optimizer is not None:
        for i, (dst, src) in enumerate(zip(optimizer.velocities, velocities)):
            if dst is not None and src is not None:
                if tuple(src.shape) != tuple(dst.shape):
                    raise CheckpointError(f"{path}: velocity {i} has shape {tuple(src.shape)}, expected {tuple(dst.shape)}")
                dst[...] = be.asarray(src)
    return meta
