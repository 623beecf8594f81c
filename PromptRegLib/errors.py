"""PromptReg's own exceptions: each says what is wrong and what to do, and has a CLI exit code."""


class PromptRegError(Exception):
    """Base class; ``exit_code`` is what the command line returns for it."""

    exit_code = 1


class UsageError(PromptRegError):
    """A request, a table, a row's option or the set-up cannot be used as given (a bad request, a missing column)."""

    exit_code = 2


class InputImageError(PromptRegError):
    """An input image is missing, unreadable, of the wrong shape or has unusable values."""

    exit_code = 3


class PromptError(PromptRegError):
    """A prompt is malformed, outside its image, or does not fit the image's dimension."""

    exit_code = 4


class CheckpointError(PromptRegError):
    """A model checkpoint is missing or does not match the model."""

    exit_code = 5


class OutputError(PromptRegError):
    """An output folder cannot be written."""

    exit_code = 6


class RegistrationError(PromptRegError):
    """Registration could not produce a trustworthy result (for example no ROI pair survived)."""

    exit_code = 7


class MemoryLimitError(PromptRegError):
    """An input would need more memory than the configured limit."""

    exit_code = 8


class Cancelled(PromptRegError):
    """The run was cancelled by the caller; nothing was written."""

    exit_code = 130
