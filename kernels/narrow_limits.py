"""(Not a family) The narrow step's limits, with no Numba: read by the op's record (gpunn's
``narrow_step``) and by the kernels of :mod:`.narrow_mlp`."""

MAX_WIDTH = 32  # most units in a layer after the input: one warp's outputs
MAX_LAYERS = 4  # most Dense layers
LOSSES = ("mse", "cross-entropy")  # the losses the step computes, by their command-line words
