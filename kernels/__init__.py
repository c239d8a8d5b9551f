"""gpunn's hand-written Numba CUDA kernels, one family per module (installed as gpunn.kernels).

Each module holds its ``@cuda.jit`` kernels, a ``launch_config`` helper that keeps
every launch within the hardware limits (:mod:`gpunn.kernels.launch`), its ``cost``
(the formula of :mod:`gpunn.backend.ops`, not a copy) and ``KERNELS``: one
:class:`~gpunn.kernels.launch.KernelSpec` per kernel with the exact signatures the
cuda backend launches it with, which the PTX checks compile (:mod:`gpunn.ptx`).

bias_act       bias + activation forward         act_backward   activation backward
bias_grad      column sum (two deterministic stages)
softmax        row softmax forward and backward  softmax_xent   fused softmax + cross-entropy
mse            quadratic loss + gradient         sgd            fused SGD / momentum / weight decay
count_correct  argmax == label count             gemm           shared-memory tiled GEMM
batch          the training loop's state on the device: gather the batch, advance the step
reduce         block reductions and the final loss reduction shared by the row kernels
"""

#: Every family module, by name: what the cuda backend launches from and the PTX checks compile.
FAMILIES = ("bias_act", "act_backward", "bias_grad", "softmax", "softmax_xent", "mse", "sgd", "count_correct",
            "gemm", "batch", "reduce")

