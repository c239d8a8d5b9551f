"""Exceptions gpunn raises for bad input.  The CLI prints them as one line."""


class GpunnError(Exception):
    """Base class: an error the user can fix, reported without a traceback by the CLI."""

    #: the command line's exit status for this error: 2 for bad input, 1 for a run that failed
    exit_status = 2


class ShapeError(GpunnError, ValueError):
    """An array of the wrong shape, dtype or dimensionality (or a label outside the classes)
    reached a layer or op."""


class DataError(GpunnError):
    """A data file is missing, corrupt, or does not fit the model."""


class CheckpointError(GpunnError):
    """A checkpoint is missing, truncated, not a checkpoint, or of another architecture."""


class BackendUnavailable(GpunnError):
    """The requested backend cannot run on this machine."""


class TrainingDiverged(GpunnError):
    """The loss became NaN or infinite."""

    exit_status = 1


class OutputError(GpunnError):
    """An output file could not be written (a full disk, say); the message names the file."""

    exit_status = 1


class GraphUnavailable(GpunnError):
    """A step cannot be captured as a CUDA graph here (the numpy backend, the simulator, a failed capture)."""
