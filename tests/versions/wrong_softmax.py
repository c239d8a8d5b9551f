"""A deliberately wrong softmax (the tests' bad version): it forgets to subtract the row's max,
so its exp overflows to inf on large logits, and it divides by the sum of every row but the last."""
import math

from numba import cuda


@cuda.jit
def softmax_wrong(x, out):
    r = cuda.grid(1)
    if r < x.shape[0]:
        s = 0.0
        for j in range(x.shape[1] - 1):  # the last column left out of the sum
            s += math.exp(x[r, j])
        for j in range(x.shape[1]):
            out[r, j] = math.exp(x[r, j]) / s


def wrong(x, out):
    softmax_wrong[(x.shape[0] + 31) // 32, 32](x, out)


def takes_one(x):
    pass


def raises(x, out):
    softmax_wrong[1, 32](x)  # a launch with an argument missing


KERNELS = [(softmax_wrong, "void(float32[:, ::1], float32[:, ::1])", 32)]
