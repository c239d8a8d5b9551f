"""Exceptions gpunn raises for bad input.  The CLI prints them as one line."""


class GpunnError(Exception):
    """Base class: an error the user can fix, reported without a traceback by the CLI."""


class ShapeError(GpunnError, ValueError):
    """An array of the wrong shape, dtype or dimensionality reached a layer or op."""


class DataError(GpunnError):
    """A data file is missing, corrupt, or does not fit the model."""


class CheckpointError(GpunnError):
    """A checkpoint is missing, truncated, not a checkpoint, or of another architecture."""


class BackendUnavailable(GpunnError):
    """The requested backend cannot run on this machine."""


class TrainingDiverged(GpunnError):
    """The loss became NaN or infinite."""


class GraphUnavailable(GpunnError):
    """A step cannot be captured as a CUDA graph here (the numpy backend, the simulator, a failed capture)."""
