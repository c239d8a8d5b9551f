"""A right version of count_correct (the tests' user version in the training step): one thread per
row finds the first maximum and adds a hit with an integer atomic."""
from numba import cuda


@cuda.jit
def count_rows(scores, labels, out):
    r = cuda.grid(1)
    if r < scores.shape[0]:
        best = 0
        for j in range(1, scores.shape[1]):
            if scores[r, j] > scores[r, best]:
                best = j
        if best == labels[r]:
            cuda.atomic.add(out, 0, 1)


def mine(scores, labels, out):
    count_rows[(scores.shape[0] + 63) // 64, 64](scores, labels, out)


KERNELS = [(count_rows, "void(float32[:, ::1], int32[::1], int32[::1])", 64)]
