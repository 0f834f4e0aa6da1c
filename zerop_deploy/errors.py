"""One exception hierarchy for the whole tool; the CLI maps it to exit codes.

Every message is one line that names the culprit (file, node, op, opset or option) and says what to
do. ``ZeropError`` subclasses that describe bad input or an unsupported model map to exit code 2; a
failed quality gate (``QualityGateError``) maps to exit code 1. Anything else escaping the CLI is a
bug.
"""

from __future__ import annotations


class ZeropError(Exception):
    """Base class of every error this package raises on purpose."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line, always: multi-line text from libraries is folded so the CLI prints a single
        # line.
        super().__init__(" ".join(str(message).split()))


class InputError(ZeropError):
    """A file, folder or value given by the user cannot be used (missing, corrupt, unsafe)."""


class ConfigError(InputError):
    """An option or configuration value is invalid."""


class UnsupportedModelError(ZeropError):
    """The model is readable but uses something this tool cannot handle (op, opset, shape)."""


class ExportError(ZeropError):
    """Writing the quantized ONNX model failed."""


class ValidationError(ZeropError):
    """onnxruntime could not run or check a model."""


class KernelArgumentError(ConfigError, ValueError):
    """An argument of a native-kernel call is wrong (shape, dtype, contiguity, range).

    Also a ValueError, which is what numpy-style callers expect from a bad array argument.
    """


class QualityGateError(ZeropError):
    """A quality gate requested by the user failed (for example agreement under --min-agreement).

    Attributes:
        doc: The finished document (report or validation result) the gate was applied to, so
            that a caller can still print or keep it; None when there is none.
    """

    exit_code = 1

    def __init__(self, message: str, doc: dict | None = None) -> None:
        super().__init__(message)
        self.doc = doc
