"""Checkpoints: weights, optimizer state and training position in a pickle-free ``.npz``.

Layout: ``format`` (a string), ``meta`` (JSON: model config, training options,
epoch/step position, the optimizer's name and counters), ``param/<i>`` arrays and the
optimizer's state as ``<name>/<i>`` arrays (``optimizer.state()``: SGD's momentum is
``velocity/<i>``, Adam's moments ``m/<i>`` and ``v/<i>``; Adam's step count is a counter).  Written by
:func:`gpunn.output.atomic_write`: to a temporary file in the same folder, flushed,
fsynced and renamed over the target, so a crash mid-write leaves the previous checkpoint
intact (a symlink is written through, a FIFO or device written into).

A checkpoint is untrusted input, read as such:

* only a regular file is opened (a FIFO or a device is refused before it is read);
* every zip member must be stored or deflated and not encrypted, and be a ``.npy`` array;
* ``format`` and ``meta`` are read no further than :data:`META_LIMIT` bytes, and the JSON
  may not nest deeper than Python can parse;
* an array's ``.npy`` header (shape, dtype) is compared with what the model needs
  *before* its data is decompressed, and no more than that many bytes are ever inflated;
* weights and optimizer state must be float32, of the model's shapes, and finite.

Every problem is a :class:`~gpunn.errors.CheckpointError` of one line naming the file and
the entry.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path

import numpy as np

from gpunn.checks import is_finite_real, is_integer
from gpunn.errors import CheckpointError
from gpunn.inputs import open_regular
from gpunn.output import atomic_write

FORMAT = "gpunn-checkpoint/1"
META_LIMIT = 1 << 24  # the most bytes the format and metadata entries may hold (16 MiB)
DEFLATE_MAX_RATIO = 1032  # deflate inflates at most about 1032:1: a member claiming more is corrupt
_MEMBER_KINDS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


def save(path, model, optimizer=None, meta=None):
    """Write ``model``'s weights (and ``optimizer``'s state: ``optimizer.state()``) with ``meta`` to ``path``."""
    be = model.backend
    arrays = {"format": np.array(FORMAT)}
    info = {"model": model.config(), **(meta or {})}
    if optimizer is not None:  # its name, and its device counters (Adam's step count) as numbers
        info["optimizer"] = {"name": optimizer.name,
                             "counters": {k: int(be.to_numpy(c)[0]) for k, c in optimizer.counters().items()}}
    arrays["meta"] = np.array(json.dumps(info))
    for i, p in enumerate(model.params):
        arrays[f"param/{i}"] = be.to_numpy(p)
    if optimizer is not None:
        for name, state in optimizer.state().items():
            for i, v in enumerate(state):
                if v is not None:
                    arrays[f"{name}/{i}"] = be.to_numpy(v)
    atomic_write(path, lambda f: np.savez(f, **arrays))


class Checkpoint:
    """An open checkpoint archive: its ``meta`` read and checked, its arrays read on request
    (:meth:`array`), each against the shape the caller expects. Use as a context manager."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = open_regular(self.path)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: no such checkpoint file") from None
        except IsADirectoryError:
            raise CheckpointError(f"{self.path} is a folder, not a checkpoint file") from None
        except OSError as exc:
            what = exc.strerror or exc
            if "a folder" in str(what):
                raise CheckpointError(f"{self.path} is a folder, not a checkpoint file") from None
            raise CheckpointError(f"{self.path}: cannot read it ({what})") from None
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self):
        magic = self._file.read(4)
        if magic != b"PK\x03\x04":  # not a zip archive: np.load would try (and refuse) a pickle
            raise CheckpointError(f"{self.path}: not a gpunn checkpoint (not an .npz archive"
                                  f"{', an empty file' if not magic else ''})")
        self._file.seek(0)
        try:
            self._zip = zipfile.ZipFile(self._file)
            self._members = {}
            for info in self._zip.infolist():
                self._check_member(info)
                self._members[info.filename.removesuffix(".npy")] = info
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError) as exc:
            raise self._corrupt(None, exc) from None
        if "format" not in self._members or "meta" not in self._members:
            raise CheckpointError(f"{self.path}: not a gpunn checkpoint (no format/meta entries)")
        fmt = self._string("format")
        if fmt != FORMAT:
            raise CheckpointError(f"{self.path}: unsupported checkpoint format {fmt[:80]!r} (expected {FORMAT})")
        try:
            meta = json.loads(self._string("meta"))
        except RecursionError:
            raise CheckpointError(f"{self.path}: meta: nested too deeply to be a checkpoint's metadata") from None
        except ValueError as exc:
            raise CheckpointError(f"{self.path}: meta: not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or "model" not in meta:
            raise CheckpointError(f"{self.path}: checkpoint metadata has no model configuration")
        self.meta = meta

    def _check_member(self, info):
        name = info.filename
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{self.path}: {name} is encrypted; a checkpoint's entries are plain")
        if info.compress_type not in _MEMBER_KINDS:
            raise CheckpointError(f"{self.path}: {name} uses zip compression method {info.compress_type}; "
                                  f"a checkpoint's entries are stored or deflated")
        if not name.endswith(".npy"):
            raise CheckpointError(f"{self.path}: {name} is not an array entry (.npy)")

    def _corrupt(self, name, exc):
        where = f"{self.path}: {name}:" if name else f"{self.path}:"
        return CheckpointError(f"{where} not a gpunn checkpoint, or truncated/corrupt "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")

    def names(self, prefix):
        """The array entries whose names start with ``prefix`` ("param/")."""
        return sorted(k for k in self._members if k.startswith(prefix))

    def _header(self, stream, name):
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(stream)
        if version in ((2, 0), (3, 0)):
            return np.lib.format.read_array_header_2_0(stream)
        raise ValueError(f"unknown .npy format version {version}")

    def _read(self, name, check):
        """The array ``name``: its header read and passed to ``check(shape, dtype)``, which raises
        when it is not what the caller expects; only then its data, and no more of it."""
        info = self._members[name]
        try:
            with self._zip.open(info) as stream:
                shape, fortran, dtype = self._header(stream, name)
                check(shape, dtype)
                if dtype.hasobject:
                    raise CheckpointError(f"{self.path}: {name} holds Python objects; a checkpoint holds numbers and text")
                nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
                ratio = DEFLATE_MAX_RATIO if info.compress_type == zipfile.ZIP_DEFLATED else 1
                if nbytes > (info.compress_size + 64) * ratio:
                    raise CheckpointError(f"{self.path}: {name} declares {nbytes:,} bytes, more than its "
                                          f"{info.compress_size:,} bytes in the archive can hold")
                array = np.empty(int(np.prod(shape, dtype=object)), dtype)  # writable, read into in place
                got = stream.readinto(memoryview(array).cast("B")) if nbytes else 0
                if got != nbytes:
                    raise CheckpointError(f"{self.path}: {name} is truncated ({got:,} of {nbytes:,} bytes)")
                if stream.read(1):
                    raise CheckpointError(f"{self.path}: {name} holds more than its header declares")
        except CheckpointError:
            raise
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError, NotImplementedError) as exc:
            raise self._corrupt(name, exc) from None
        return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)

    def _string(self, name) -> str:
        def check(shape, dtype):
            if shape != () or dtype.kind != "U" or dtype.itemsize > META_LIMIT:
                raise CheckpointError(f"{self.path}: {name} is {dtype}{shape}; expected one string of at most "
                                      f"{META_LIMIT // 4:,} characters")

        return str(self._read(name, check)[()])

    def array(self, name, shape):
        """The float32 array ``name`` of ``shape``, finite; CheckpointError naming it otherwise."""
        shape = tuple(shape)

        def check(got, dtype):
            if tuple(got) != shape or dtype != np.dtype("<f4"):
                raise CheckpointError(f"{self.path}: {name} is {dtype}{tuple(got)}, the model needs float32{shape}")

        array = self._read(name, check)
        if not np.isfinite(array).all():
            bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
            raise CheckpointError(f"{self.path}: {name} holds {bad:,} values that are not finite (NaN or inf): "
                                  f"a checkpoint of a diverged run")
        return array

    def close(self):
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_meta(path) -> dict:
    """The checkpoint's metadata (its model configuration under ``"model"``), checked as a
    whole archive is (see the module docstring), without reading any array."""
    with Checkpoint(path) as ck:
        return ck.meta


def load(path):
    """Read a checkpoint: ``(meta, params, state)`` as host arrays, each checked against the
    shapes its model configuration gives before it is read; CheckpointError if bad. ``state``
    is the optimizer's, by name (``{"velocity": [array or None, ...]}`` for SGD with momentum):
    every ``<name>/<i>`` entry, None where the file has none for parameter ``i``."""
    from gpunn.layers import config_shapes

    with Checkpoint(path) as ck:
        try:
            shapes = config_shapes(ck.meta["model"])
        except ValueError as exc:
            raise CheckpointError(f"{path}: model: {exc}") from None
        _check_names(ck, "param/", len(shapes), required=True)
        params = [ck.array(f"param/{i}", s) for i, s in enumerate(shapes)]
        state = {}
        for name in sorted({k.split("/")[0] for k in ck.names("") if "/" in k} - {"param"}):
            _check_names(ck, f"{name}/", len(shapes), required=False)
            have = ck.names(f"{name}/")
            state[name] = [ck.array(f"{name}/{i}", s) if f"{name}/{i}" in have else None for i, s in enumerate(shapes)]
    return ck.meta, params, state


def _check_names(ck, prefix, n, required):
    names = ck.names(prefix)
    expected = [f"{prefix}{i}" for i in range(n)]
    extra = sorted(set(names) - set(expected))
    if extra:
        raise CheckpointError(f"{ck.path}: {extra[0]}: the model has {n} parameter arrays ({prefix}0 to {prefix}{n - 1})")
    if required and names != sorted(expected):
        missing = sorted(set(expected) - set(names))
        raise CheckpointError(f"{ck.path}: {missing[0]} is missing")


# ---------------------------------------------------------------------------- a run's position

def _field(name, value, ok, what):
    if not ok(value):
        raise ValueError(f"{name} must be {what}, got {str(value)[:80] if isinstance(value, str) else repr(value)[:80]}")
    return value


def data_identity(train_labels) -> dict:
    """What a resumed run must train on: the same examples (their number and their labels' CRC-32),
    hence the same batches."""
    labels = np.ascontiguousarray(train_labels, np.int32)
    return {"train_samples": int(labels.shape[0]), "train_labels_crc32": zlib.crc32(labels.tobytes())}


def run_meta(train, epoch, step, partial, history, data, in_features, num_classes) -> dict:
    """A training run's record in a checkpoint's ``meta``, as :func:`check_position` reads it back.

    ``train``: the run's options (``TrainConfig.as_dict()``); ``epoch`` epochs done and ``step``
    steps of the next; ``partial``: that epoch's ``{loss_sum, correct, seconds, seen}`` so far
    (None when ``step`` is 0); ``history``: the finished epochs' records (dicts); ``data``:
    :func:`data_identity` of the training set; the model's input and output widths."""
    return {"train": train, "epoch": int(epoch), "step": int(step), "partial": partial,
            "history": list(history), "data": data, "in_features": int(in_features),
            "num_classes": int(num_classes)}


def check_position(meta, steps_per_epoch, batch_size, data, in_features, num_classes, history_fields):
    """``(epoch, step, history, partial)`` of a checkpoint's metadata, each field checked against
    the run it would continue; ValueError naming the first field that is wrong. ``history`` is
    the finished epochs' records (dicts of ``history_fields``, the first being ``epoch``).

    ``epoch`` finished epochs, each with its ``history`` record; ``step`` in
    ``[0, steps_per_epoch]``; ``partial`` (the stopped epoch's sums so far) present exactly when
    ``step`` > 0 and consistent with it; ``data`` (when saved) this run's training data."""
    epoch = _field("epoch", meta.get("epoch", 0), lambda v: is_integer(v) and v >= 0, "a non-negative integer")
    step = _field("step", meta.get("step", 0), lambda v: is_integer(v) and 0 <= v <= steps_per_epoch,
                  f"an integer in [0, {steps_per_epoch}] (the steps of an epoch)")
    for name, here in (("in_features", in_features), ("num_classes", num_classes)):
        if name in meta:
            _field(name, meta[name], lambda v, here=here: is_integer(v) and v == here, f"{here} (this run's)")
    saved = meta.get("data")
    if saved is not None:
        if not (isinstance(saved, dict) and set(saved) == set(data) and all(is_integer(v) for v in saved.values())):
            raise ValueError(f"data must be a record of {', '.join(data)} (integers), got {str(saved)[:80]}")
        if saved != data:
            raise ValueError(f"data: the run was trained on {saved['train_samples']:,} examples"
                             f"{'' if saved['train_samples'] != data['train_samples'] else ' with other labels'}; "
                             f"this data set has {data['train_samples']:,}: resume with the same data (and --train-samples)")
    history = meta.get("history", [])
    if not isinstance(history, list) or len(history) != epoch:
        raise ValueError(f"history must list the {epoch} finished epochs, got {str(history)[:80]}")
    fields = list(history_fields)
    stats = []
    for i, h in enumerate(history):
        if not isinstance(h, dict) or sorted(h) != sorted(fields):
            raise ValueError(f"history[{i}] must be a record of {', '.join(fields)}, got {str(h)[:80]}")
        _field(f"history[{i}].epoch", h["epoch"], lambda v, i=i: is_integer(v) and v == i + 1, str(i + 1))
        for name in fields[1:]:
            _field(f"history[{i}].{name}", h[name], is_finite_real, "a finite number")
        stats.append(dict(h))
    partial = meta.get("partial")
    if step == 0:
        _field("partial", partial, lambda v: v is None, "null at the start of an epoch")
        return epoch, step, stats, {"loss_sum": 0.0, "correct": 0, "seconds": 0.0, "seen": 0}
    if not isinstance(partial, dict) or sorted(partial) != ["correct", "loss_sum", "seconds", "seen"]:
        raise ValueError(f"partial must be a record of loss_sum, correct, seconds, seen after step {step}, "
                         f"got {str(partial)[:80]}")
    seen = _field("partial.seen", partial["seen"], lambda v: is_integer(v) and v == min(step * batch_size, data["train_samples"]),
                  f"{min(step * batch_size, data['train_samples'])} (the samples of {step} steps)")
    _field("partial.correct", partial["correct"], lambda v: is_integer(v) and 0 <= v <= seen, f"an integer in [0, {seen}]")
    _field("partial.loss_sum", partial["loss_sum"], lambda v: is_finite_real(v) and v >= 0, "a finite number >= 0")
    _field("partial.seconds", partial["seconds"], lambda v: is_finite_real(v) and v >= 0, "a finite number >= 0")
    return epoch, step, stats, {"loss_sum": float(partial["loss_sum"]), "correct": int(partial["correct"]),
                                "seconds": float(partial["seconds"]), "seen": int(seen)}


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


def save_model(model, path) -> None:
    """``gpunn.save``: a model's architecture and weights in a checkpoint at ``path`` (written whole
    or not at all); :func:`load_model` reads it back."""
    save(path, model)


def load_model(path, *, backend=None):
    """``gpunn.load``: the model a checkpoint holds (any gpunn checkpoint: ``gpunn.save``'s or a
    training run's), built from its architecture on ``backend`` with its weights, every entry
    checked as untrusted input first (:class:`~gpunn.errors.CheckpointError` naming the file)."""
    from gpunn.layers import from_config

    meta = read_meta(path)
    try:
        model = from_config(meta.get("model"), backend=backend)
    except ValueError as exc:
        raise CheckpointError(f"{path}: model: {exc}") from None
    restore(path, model)
    return model


def restore(path, model, optimizer=None):
    """Load a checkpoint into an existing model (and optimizer); returns its meta.

    Every array of the optimizer's state (``optimizer.state()``) must be in the file: a resume
    without its momentum would not continue the run it claims to."""
    with Checkpoint(path) as ck:
        saved = ck.meta["model"]
        if not isinstance(saved, list) or not all(isinstance(c, dict) for c in saved):
            raise CheckpointError(f"{path}: model: a model configuration is a list of layers")
        check_architecture(path, saved, model.config())
        counters = _check_counters(path, ck.meta, optimizer) if optimizer is not None else {}
        be = model.backend
        _check_names(ck, "param/", len(model.params), required=True)
        arrays = [ck.array(f"param/{i}", dst.shape) for i, dst in enumerate(model.params)]
        states = []
        for name, state in (optimizer.state() if optimizer is not None else {}).items():
            _check_names(ck, f"{name}/", len(model.params), required=False)
            for i, dst in enumerate(state):
                if dst is None:
                    continue
                if f"{name}/{i}" not in ck.names(f"{name}/"):
                    raise CheckpointError(f"{path}: {name}/{i} is missing: the optimizer keeps {name} for "
                                          f"parameter {i}, and this checkpoint holds none")
                states.append((dst, ck.array(f"{name}/{i}", dst.shape)))
        for dst, src in zip(model.params, arrays):  # only once every array is read and checked
            dst[...] = be.asarray(src)
        for dst, src in states:
            dst[...] = be.asarray(src)
        for name, value in counters.items():
            be.upload(np.array([value], np.int32), optimizer.counters()[name])
        return ck.meta


def _check_counters(path, meta, optimizer) -> dict:
    """The optimizer's counters saved in ``meta`` (``{"optimizer": {"name", "counters"}}``), each
    an int32 >= 0; CheckpointError naming the entry when one is missing or wrong, or when the
    checkpoint's optimizer is another."""
    saved = meta.get("optimizer")
    if saved is None:  # a checkpoint from before optimizers were named: SGD's, which has no counters
        saved = {"name": "sgd", "counters": {}}
    if not isinstance(saved, dict) or not isinstance(saved.get("counters"), dict):
        raise CheckpointError(f"{path}: optimizer must be a record of name and counters, got {str(saved)[:80]}")
    if saved.get("name") != optimizer.name:
        raise CheckpointError(f"{path}: optimizer: the checkpoint holds {str(saved.get('name'))[:40]}'s state, "
                              f"this run's optimizer is {optimizer.name}")
    out = {}
    for name in optimizer.counters():
        value = saved["counters"].get(name)
        if not (is_integer(value) and 0 <= value < 2**31):
            raise CheckpointError(f"{path}: optimizer.counters.{name} must be an integer in [0, 2^31), got {value!r}")
        out[name] = int(value)
    return out
