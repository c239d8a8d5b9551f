"""A fix to Numba's CUDA simulator, applied when the simulator is on: shared arrays that every
thread of a block really shares.

The simulator runs a block's threads as Python threads, and ``cuda.shared.array`` hands each
caller the array its launch keeps for that source line, made on the first call::

    res = self._allocations.get(caller)
    if res is None:
        res = np.empty(shape, dtype)          # <- a thread switch here ...
        self._allocations[caller] = res       # ... and two threads make two arrays

with no lock (numba-cuda 0.30.4, ``numba/cuda/simulator/kernelapi.py``, ``FakeCUDAShared``).
When the interpreter switches threads between the lookup and the store, the block's threads
get different arrays: a thread's writes never reach the others, a reduction reads stale or
uninitialised memory, and a result is wrong only now and then, more often on a loaded
machine (where ``tests/test_end_to_end.py`` failed under load averages of 15-40). With
``sys.setswitchinterval(1e-6)``, 2 in 100 launches of a 64-thread block sum went wrong
(``tests/kernels/test_simulated.py``).

:func:`apply` serialises the allocation with one lock, so each launch makes each array once.
It is idempotent and changes nothing on a real GPU, where the simulator is not loaded.
"""
from __future__ import annotations

import sys
import threading

_lock = threading.Lock()


def apply() -> bool:
    """Make the simulator's shared-array allocation thread-safe; True when the simulator is on."""
    from numba import cuda

    if not cuda.jit.__module__.startswith("numba.cuda.simulator"):
        return False
    from numba.cuda.simulator import kernelapi

    np, types, numpy_support = kernelapi.np, kernelapi.types, kernelapi.numpy_support  # what it uses itself

    shared = kernelapi.FakeCUDAShared
    if getattr(shared.array, "_gpunn_locked", False):
        return True
    original = shared.array

    def array(self, shape, dtype, alignment=None):
        """``FakeCUDAShared.array`` with its lookup and store under one lock."""
        if alignment is not None or shape == 0:  # refused, or dynamic shared memory: no per-line array
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        frame = sys._getframe(1)  # the kernel's line that asks: one array per line, as the simulator keys them
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with _lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    array._gpunn_locked = True
    shared.array = array
    return True


apply()
