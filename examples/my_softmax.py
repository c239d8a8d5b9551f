"""Your own softmax, two versions: the kernel lab's tutorial (README, "Write your own kernel").

    NUMBA_ENABLE_CUDASIM=1 gpunn bench softmax --version examples/my_softmax.py:naive   # validate on a CPU
    gpunn kernels examples/my_softmax.py                                                  # registers, occupancy
    gpunn bench softmax --version examples/my_softmax.py:naive --version examples/my_softmax.py:block

A version takes the op's arguments in the order of its record (softmax: x, out) and writes its
outputs; KERNELS, at the end, declares what `gpunn kernels` compiles.
"""
import math

from numba import cuda, float32

THREADS = 128


@cuda.jit
def softmax_naive(x, out):
    """One thread per row: the obvious loops."""
    r = cuda.grid(1)
    if r < x.shape[0]:
        m = x[r, 0]
        for j in range(1, x.shape[1]):
            m = max(m, x[r, j])
        s = float32(0.0)
        for j in range(x.shape[1]):
            s += math.exp(x[r, j] - m)
        for j in range(x.shape[1]):
            out[r, j] = math.exp(x[r, j] - m) / s


@cuda.jit
def softmax_block(x, out):
    """One block per row: the threads stride along the row (coalesced) and meet in shared memory."""
    sh = cuda.shared.array(THREADS, float32)
    r, t = cuda.blockIdx.x, cuda.threadIdx.x
    m = float32(-math.inf)
    for j in range(t, x.shape[1], THREADS):
        m = max(m, x[r, j])
    sh[t] = m
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:  # tree: the max of the row in sh[0]
        if t < half:
            sh[t] = max(sh[t], sh[t + half])
        cuda.syncthreads()
        half //= 2
    m = sh[0]
    cuda.syncthreads()
    s = float32(0.0)
    for j in range(t, x.shape[1], THREADS):
        s += math.exp(x[r, j] - m)
    sh[t] = s
    cuda.syncthreads()
    half = THREADS // 2
    while half > 0:  # tree: the sum
        if t < half:
            sh[t] += sh[t + half]
        cuda.syncthreads()
        half //= 2
    s = sh[0]
    for j in range(t, x.shape[1], THREADS):
        out[r, j] = math.exp(x[r, j] - m) / s


def naive(x, out):
    softmax_naive[(x.shape[0] + THREADS - 1) // THREADS, THREADS](x, out)


def block(x, out):
    softmax_block[x.shape[0], THREADS](x, out)


KERNELS = [
    (softmax_naive, "void(float32[:, ::1], float32[:, ::1])", THREADS),
    (softmax_block, "void(float32[:, ::1], float32[:, ::1])", THREADS),
]
