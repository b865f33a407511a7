"""The errors onnxpress raises on purpose.

Every error a user can cause derives from `OnnxpressError`, so the CLI can print one readable
line for it (and a traceback only with `--debug`). Messages name the file, tensor, node or
pass involved and say what to do.
"""


class OnnxpressError(Exception):
    """Base class of every error onnxpress raises on purpose."""


class ModelLoadError(OnnxpressError):
    """The model could not be read: missing file, not ONNX, truncated or invalid."""


class SaveError(OnnxpressError):
    """The model could not be written (checker failure, refused overwrite)."""


class VerificationError(OnnxpressError):
    """A pass left the graph structurally broken or changed the outputs of an exact pass."""


class PassError(OnnxpressError):
    """A pass failed, is unknown, or was given bad options."""


class PreconditionError(PassError):
    """A pass cannot run on this model or context yet (e.g. "run calibrate first")."""


class DataError(OnnxpressError):
    """Input data does not match the model's inputs (names, dtypes, shapes) or is empty."""


class TargetError(OnnxpressError):
    """The target is unknown or its onnxruntime execution provider is not installed."""


class GuardError(PassError):
    """A lossy result misses its accuracy budget, or is slower than the model it replaces,
    and no fallback fixes it: nothing is written (the message has the numbers)."""
