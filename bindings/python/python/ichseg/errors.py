"""Exceptions of the ichseg package.

Every failure of the library arrives as a subclass of :class:`Error` whose ``status`` is the
name of the C ABI's status code without its ``ICHSEG_STATUS_`` prefix (``"INVALID_ARGUMENT"``,
``"IO"``, ...) and whose ``message`` is the library's message. Each class also derives from the
closest built-in exception (``ValueError``, ``OSError``, ``MemoryError``, ``RuntimeError``), so
generic handlers keep working.
"""

from __future__ import annotations


class Error(Exception):
    """Base of every libichseg error; ``status`` names the library's status code."""

    status: str = "UNKNOWN"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"[{self.status}] {self.message}"


class InvalidArgumentError(Error, ValueError):
    """A value out of range or inconsistent: options, array shape or dtype, spacing, labels."""

    status = "INVALID_ARGUMENT"


class IoError(Error, OSError):
    """Reading or writing a file failed at the operating-system level (e.g. a missing file)."""

    status = "IO"


class InvalidImageError(Error, ValueError):
    """A NIfTI file or DICOM series is malformed or uses a feature libichseg does not read."""

    status = "INVALID_IMAGE"


class NonFiniteError(Error, ValueError):
    """The volume holds NaN or infinity."""

    status = "NON_FINITE"


class InvalidModelError(Error, ValueError):
    """The ONNX file cannot be parsed or is not the kind of model the call needs."""

    status = "INVALID_MODEL"


class InferenceError(Error, RuntimeError):
    """The network failed while running (also: out of GPU memory after the batch retries)."""

    status = "INFERENCE"


class OutOfMemoryError(Error, MemoryError):
    """A buffer sized by the input could not be allocated or exceeds ``memory_limit_mb``."""

    status = "OUT_OF_MEMORY"


class UnsupportedError(Error):
    """A feature this build or machine does not have (e.g. ``device="cuda"`` without a GPU)."""

    status = "UNSUPPORTED"


class CancelledError(Error):
    """The progress callback returned ``False``."""

    status = "CANCELLED"


class PanicError(Error, RuntimeError):
    """An internal error in libichseg (a bug): caught at the boundary instead of aborting."""

    status = "PANIC"


__all__ = [
    "Error",
    "InvalidArgumentError",
    "IoError",
    "InvalidImageError",
    "NonFiniteError",
    "InvalidModelError",
    "InferenceError",
    "OutOfMemoryError",
    "UnsupportedError",
    "CancelledError",
    "PanicError",
]
