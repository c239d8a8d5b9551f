"""gpunn's hand-written Numba CUDA kernels, one family per module (installed as gpunn.kernels).

Each module holds its ``@cuda.jit`` kernels, a ``launch_config`` helper that keeps
every launch within the hardware limits (:mod:`.launch`) and ``KERNELS``: one
:class:`~.launch.KernelSpec` per kernel with the exact signatures the cuda backend
launches it with, which the PTX checks compile (:mod:`gpunn.ptx`).

This package sits below the library: it imports nothing from ``gpunn`` (the families
import each other relatively), and what an op means and costs is its record in
:mod:`gpunn.backend.ops`, which a KernelSpec names by its ``op``.

bias_act               bias + activation forward
act_backward           activation backward
bias_grad              column sum (two deterministic stages), alone or fused with act_backward
softmax                row softmax forward and backward
softmax_cross_entropy  fused softmax + cross-entropy
mse                    quadratic loss + gradient
sgd                    fused SGD / momentum / weight decay
adam                   fused Adam / AdamW, and the optimizer's step count on the device
dropout                inverted dropout, forward and backward, its mask from a counter-based hash
count_correct          argmax == label count
gemm                   shared-memory tiled GEMM
batch                  the training loop's state on the device: gather the batch, advance the step
reduce                 block reductions and the final loss reduction shared by the row kernels
narrow_mlp             a narrow MLP's whole training step (the primer's network) in two kernels

random                 (not a family) Philox-2x32: the counter-based generator dropout's mask comes from
narrow_limits          (not a family) the narrow step's limits, without Numba (the op's record reads them)
update_rules           (not a family) optimizer rules per element, compiled by the kernels and the CPU loops
simulator              (not a family) a lock that Numba's CUDA simulator lacks: see its docstring
"""

#: Every family module, by name: what the cuda backend launches from and the PTX checks compile.
FAMILIES = ("bias_act", "act_backward", "bias_grad", "softmax", "softmax_cross_entropy", "mse", "sgd", "adam",
            "dropout", "count_correct", "gemm", "batch", "reduce", "narrow_mlp")

