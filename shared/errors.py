"""Errors a user can act on. The CLI prints their message and exits non-zero, without a traceback."""


class PneumoniaError(Exception):
    """Base class: the message says what went wrong and, where possible, what to do."""


class DatasetError(PneumoniaError):
    """Missing, malformed or corrupt data; the message names the file."""


class CheckpointError(PneumoniaError):
    """A checkpoint that is missing, of the wrong kind, or contradicts the options given."""


class ConfigError(PneumoniaError):
    """Options that cannot work together, or a malformed option value."""


class ResourceExhaustedError(PneumoniaError):
    """A bounded resource is full (e.g. the trainer's job queue): try again later."""


class ConflictError(PneumoniaError):
    """The request would change what another live piece of work owns (e.g. the outputs of a running job)."""
