"""Kernel launches without Numba's dispatcher: compile once, flatten once, launch in microseconds.

``kernel[grid, block](*args)`` does a lot of work on every call: it finds the overload
for the arguments' types, wraps each CuPy array as a Numba device array through
``__cuda_array_interface__`` and flattens it into the kernel's parameters.  On an H200
that costs 67-134 µs of host time per launch, for kernels that run in 2-5 µs, and a
training step spent 92% of its time there.  The cuda backend does that work once:

1. **Compile once.** Each kernel is compiled by Numba for the one signature its family
   declares (``KernelSpec.signatures[0]``, the signature the PTX checks compile too),
   and its cubin kept on disk (:class:`Launcher`): a second process loads it in a
   millisecond instead of compiling for a second or more.
2. **Flatten once.** :func:`flatten` turns the arguments into the kernel's parameters,
   exactly as Numba's own launch does (``_Kernel._prepare_args``): an array is its data
   model's fields, ``meminfo, parent, nitems, itemsize, data, shape..., strides...``
   (meminfo and parent NULL, strides in bytes), a scalar is itself in its declared type.
   :class:`BoundLaunch` packs those values once into a parameter block that it keeps.
3. **Launch.** One ``cuLaunchKernel`` call through ctypes, on the current stream.

The cuda backend keeps each op call's bound launches, keyed by the op, its scalars and
each array's address and shape (``CudaBackend._queue``): for C-contiguous arrays of the
declared dtypes those determine every parameter byte, so a cache hit launches exactly
what a fresh flattening would.  A launch recorded while a stream is capturing becomes a
node of the CUDA graph.

The simulator has no driver: the backend launches through the dispatcher there.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import struct
import sys

import numpy as np

from gpunn.inputs import read_regular
from gpunn.output import write_cache_file

#: struct format of each scalar type a kernel signature may declare (Numba type name -> format)
SCALAR_FORMATS = {"int32": "i", "int64": "q", "uint32": "I", "uint64": "Q", "float32": "f", "float64": "d"}
#: fields of an array argument before its shape and strides: meminfo, parent, nitems, itemsize, data
ARRAY_HEAD_FIELDS = 5
#: bytes per parameter slot in a packed block (every field of Numba's ABI fits in 8)
SLOT = 8


def param_formats(argtypes) -> str:
    """One struct format character per kernel parameter, for Numba argument types.

    An ``Array`` of ndim d is ``5 + 2d`` intp fields; a scalar is one field of its type."""
    from numba.core import types

    out = []
    for t in argtypes:
        if isinstance(t, types.Array):
            out.append("q" * (ARRAY_HEAD_FIELDS + 2 * t.ndim))
        elif str(t) in SCALAR_FORMATS:
            out.append(SCALAR_FORMATS[str(t)])
        else:
            raise NotImplementedError(f"kernel argument type {t} is not supported by gpunn's launcher")
    return "".join(out)


def device_pointer(a) -> int:
    """The address of an array's first element: CuPy (``a.data.ptr``) or NumPy (the simulator, tests)."""
    data = a.data
    return data.ptr if hasattr(data, "ptr") else a.ctypes.data


def c_strides(shape, itemsize) -> list:
    """Strides in bytes of a C-contiguous array (what Numba derives for one)."""
    strides, step = [], itemsize
    for extent in reversed(shape):
        strides.append(step)
        step *= extent
    return strides[::-1]


def flatten(argtypes, args) -> list:
    """The values of every kernel parameter, in order: what Numba's launch would pass.

    Arrays must be C-contiguous and of the declared dtype and ndim (the kernels'
    signatures say ``[::1]``); a mismatch raises TypeError."""
    from numba.core import types

    values = []
    for i, (t, a) in enumerate(zip(argtypes, args, strict=True)):
        if isinstance(t, types.Array):
            dtype = np.dtype(str(t.dtype))
            if a.dtype != dtype or a.ndim != t.ndim or not a.flags.c_contiguous:
                raise TypeError(f"argument {i}: expected a C-contiguous {t.ndim}-D {dtype} array, got "
                                f"{a.dtype} {tuple(a.shape)}{'' if a.flags.c_contiguous else ' (not C-contiguous)'}")
            shape = tuple(int(s) for s in a.shape)
            values += [0, 0, int(a.size), dtype.itemsize, device_pointer(a), *shape,
                       *c_strides(shape, dtype.itemsize)]
        else:
            values.append(a.item() if isinstance(a, np.generic) else a)
    return values


def pack(formats: str, values) -> ctypes.Array:
    """A parameter block: one 8-byte slot per parameter, each value at the start of its slot."""
    if len(formats) != len(values):
        raise ValueError(f"{len(values)} values for {len(formats)} parameters")
    block = (ctypes.c_uint64 * max(len(formats), 1))()
    for k, (fmt, value) in enumerate(zip(formats, values)):
        struct.pack_into("<" + fmt, block, SLOT * k, value)
    return block


def unpack(formats: str, block) -> list:
    """The values in a parameter block (for tests and for reading back what will be launched)."""
    return [struct.unpack_from("<" + fmt, block, SLOT * k)[0] for k, fmt in enumerate(formats)]


def _dim3(d):
    d = (d,) if np.isscalar(d) else tuple(d)
    return tuple(int(v) for v in (*d, 1, 1)[:3])


class CudaError(RuntimeError):
    """A CUDA driver call failed."""


class _Driver:
    """The few driver entry points the launcher needs, through ctypes."""

    def __init__(self):
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:  # pragma: no cover - only without a driver
            raise CudaError(f"the CUDA driver library (libcuda.so.1) cannot be loaded: {exc}") from None
        launch = lib.cuLaunchKernel
        launch.restype = ctypes.c_int  # its arguments are passed as ctypes values (BoundLaunch): no argtypes
        self.launch = launch
        self._load_data = lib.cuModuleLoadData
        self._load_data.restype = ctypes.c_int
        self._load_data.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
        self._get_function = lib.cuModuleGetFunction
        self._get_function.restype = ctypes.c_int
        self._get_function.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_char_p]
        self._error_name = lib.cuGetErrorName
        self._error_name.restype = ctypes.c_int
        self._error_name.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]

    def _check(self, code, what):
        if code:
            raise CudaError(f"{what} failed: {self.error_name(code)}")

    def load(self, image: bytes, entry: bytes) -> int:
        """The ``CUfunction`` named ``entry`` of a cubin, loaded into the current context (kept loaded)."""
        module, function = ctypes.c_void_p(), ctypes.c_void_p()
        self._check(self._load_data(ctypes.byref(module), image), "loading a kernel module")
        self._check(self._get_function(ctypes.byref(function), module, entry), f"finding {entry.decode()}")
        return function.value

    def error_name(self, code: int) -> str:
        name = ctypes.c_char_p()
        if self._error_name(code, ctypes.byref(name)) == 0 and name.value:
            return name.value.decode()
        return f"CUDA error {code}"


_driver = None


def driver() -> _Driver:
    global _driver
    if _driver is None:
        _driver = _Driver()
    return _driver


class BoundLaunch:
    """One kernel with its grid, block and arguments fixed: calling it launches on a stream."""

    __slots__ = ("name", "formats", "params", "_block", "_pointers", "_head")

    def __init__(self, name, function: int, grid, block, formats: str, values):
        self.name, self.formats = name, formats
        self._block = pack(formats, values)  # kept alive: the driver reads the parameters from it
        base = ctypes.addressof(self._block)
        self._pointers = (ctypes.c_void_p * max(len(formats), 1))(*[base + SLOT * k for k in range(len(formats))])
        (gx, gy, gz), (bx, by, bz) = _dim3(grid), _dim3(block)
        # cuLaunchKernel's arguments before the stream, as ctypes values once (half the cost of
        # converting Python ints on every call)
        self._head = (ctypes.c_void_p(function), *[ctypes.c_uint(v) for v in (gx, gy, gz, bx, by, bz, 0)])

    @property
    def values(self):
        """The parameter values this launch passes (read back from its block)."""
        return unpack(self.formats, self._block)

    def __call__(self, stream: ctypes.c_void_p) -> None:
        """Launch on ``stream`` (a ``ctypes.c_void_p``: see :func:`stream_arg`)."""
        code = _launch_kernel(*self._head, stream, self._pointers, None)
        if code:
            raise CudaError(f"launching {self.name} failed: {driver().error_name(code)}")


_streams = {}


def stream_arg(stream: int) -> ctypes.c_void_p:
    """A stream handle as the ctypes value a launch takes (cached: streams are few)."""
    arg = _streams.get(stream)
    if arg is None:
        if len(_streams) > 64:
            _streams.clear()
        arg = _streams[stream] = ctypes.c_void_p(stream)
    return arg


def _launch_kernel(*args):
    """``cuLaunchKernel``, bound to the driver on first use."""
    global _launch_kernel
    _launch_kernel = driver().launch
    return _launch_kernel(*args)


class Launcher:
    """Compiles each kernel once (or loads it from the disk cache) and binds its launches
    (:class:`BoundLaunch`).

    The disk cache holds each kernel's cubin for the device's compute capability, under
    ``cache_dir`` (the cuda backend gives ``gpunn.env.cache_dir("kernels", <kernels source digest>)``),
    keyed by every compiler input (:meth:`cache_path`) and checked by a content hash before it
    is loaded (:func:`read_cache_entry`).  A process
    that finds them loads each with one ``cuModuleLoadData``: no Numba compilation, not even
    the typing set-up Numba does before loading its own cache (about a second).  What a
    process runs is always a cubin loaded this way, whether it compiled it or read it."""

    def __init__(self, specs, cc, cache_dir=None):
        #: dispatcher -> KernelSpec, for every kernel the backend may launch
        self.specs = {spec.kernel: spec for spec in specs}
        self.cc = tuple(cc)  # (major, minor) of the device
        self.cache_dir = cache_dir  # None: compile in every process
        self._compiled = {}  # dispatcher -> (function handle, argtypes, formats)

    def compiled(self, kernel):
        """``(function handle, argtypes, formats)`` of a kernel, loaded or compiled on first use."""
        entry = self._compiled.get(kernel)
        if entry is None:
            spec = self.specs[kernel]
            signature = spec.signatures[0]
            argtypes = tuple(signature.args)
            entry = self._compiled[kernel] = (self._function(spec, signature), argtypes, param_formats(argtypes))
        return entry

    def cache_path(self, spec, signature):
        """The cache file of one kernel, signature and architecture (None without a cache).

        Its name is a digest of every compiler input that changes the code: besides the
        kernels' source (the cache folder's own digest), the kernel, its signature, the
        architecture, numba-cuda's and NVVM's versions and the dispatcher's code options."""
        if self.cache_dir is None:
            return None
        from pathlib import Path

        options = getattr(spec.kernel, "targetoptions", {})
        inputs = [spec.name, str(signature), str(self.cc), *compiler_versions(),
                  *(f"{k}={options.get(k)!r}" for k in CODE_OPTIONS)]
        key = hashlib.sha256("|".join(inputs).encode()).hexdigest()[:16]
        return Path(self.cache_dir) / f"{spec.name}-sm{self.cc[0]}{self.cc[1]}-{key}.cubin"

    def _function(self, spec, signature) -> int:
        path = self.cache_path(spec, signature)
        if path is not None:
            cached = read_cache_entry(path)
            if cached is not None:
                try:
                    return driver().load(cached[1], cached[0])
                except CudaError as exc:  # a cubin this driver refuses: compile it again
                    _ignore(path, f"the driver cannot load it ({exc})")
        compiled = spec.kernel.compile(signature)
        cubin = compiled.library.get_cubin()
        image = bytes(getattr(cubin, "code", cubin))  # a cuda.core ObjectCode, or bytes in older releases
        entry = compiled.entry_name.encode()
        function = driver().load(image, entry)
        if path is not None:
            _save(path, cache_entry(entry, image))
        return function

    def bind(self, name, kernel, grid, block, args) -> BoundLaunch:
        """A launch of ``kernel`` with these arguments, flattened and packed now."""
        function, argtypes, formats = self.compiled(kernel)
        return BoundLaunch(name, function, grid, block, formats, flatten(argtypes, args))

    def launch(self, name, kernel, grid, block, args, stream: int) -> None:
        """Bind and launch, once: what the profiler's launch hooks go through (the backend keeps
        the bound launches of each op call itself, for its fast path)."""
        self.bind(name, kernel, grid, block, args)(stream_arg(stream))


# The dispatcher options that change the machine code (numba-cuda's @cuda.jit keywords).
CODE_OPTIONS = ("debug", "lineinfo", "opt", "fastmath", "lto", "inline", "forceinline", "launch_bounds",
                "max_registers", "link")

# A cache file: this line, the SHA-256 (hex) of what follows it, a newline, the entry's name,
# a newline, the cubin.
CACHE_MAGIC = b"gpunn-cubin 1\n"
CACHE_LIMIT = 64 << 20  # the largest cache file read (gpunn's cubins are tens of kB)


@functools.lru_cache(maxsize=None)
def compiler_versions() -> tuple[str, str]:
    """numba-cuda's and NVVM's versions, as the cache key holds them ("?" where unknown)."""
    try:
        import numba_cuda

        numba_cuda_version = numba_cuda.__version__
    except (ImportError, AttributeError):  # pragma: no cover - numba-cuda always has it
        numba_cuda_version = "?"
    try:
        from numba.cuda.cudadrv import nvvm

        nvvm_version = ".".join(map(str, nvvm.NVVM().get_version()))
    except Exception:  # noqa: BLE001 - no libNVVM here: nothing compiles, and the key just says so
        nvvm_version = "?"
    return f"numba-cuda {numba_cuda_version}", f"NVVM {nvvm_version}"


def cache_entry(entry: bytes, image: bytes) -> bytes:
    """The bytes of a cache file holding the cubin ``image`` and its entry's name."""
    body = entry + b"\n" + image
    return CACHE_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body


def read_cache_entry(path) -> tuple[bytes, bytes] | None:
    """(entry name, cubin) from a cache file; None when there is none, or when what is there is
    not a regular file gpunn wrote whole (a link, a FIFO, a device, a torn or altered file):
    then it is compiled again and replaced, saying so in one line."""
    try:
        data = read_regular(path, CACHE_LIMIT, follow_links=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        _ignore(path, exc.strerror or str(exc))
        return None
    digest, _, body = data.removeprefix(CACHE_MAGIC).partition(b"\n")
    entry, _, image = body.partition(b"\n")
    if not data.startswith(CACHE_MAGIC) or hashlib.sha256(body).hexdigest().encode() != digest or not entry:
        _ignore(path, "not a whole cache entry (its content hash does not match)")
        return None
    return entry, image


def _ignore(path, why) -> None:
    print(f"gpunn: ignoring the kernel cache file {path}: {why}; compiling it again", file=sys.stderr)


def _save(path, data: bytes) -> None:
    """Write a cache file whole or not at all, never through a link (:func:`gpunn.output.
    write_cache_file`); a cache that cannot be written (a read-only home) just means compiling
    again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_cache_file(path, data)
    except OSError:
        pass
