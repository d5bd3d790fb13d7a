"""Errors a user can act on.

Every error raised for bad input derives from :class:`TetherError`. The entry point prints
``tether: error: <message>`` on one line and exits with status 2, so messages must be a single
line that names the config field, file:line or resource at fault.
"""


class TetherError(Exception):
    """Base class for user-facing errors (printed on one line, exit status 2)."""


class ConfigError(TetherError):
    """A config value is invalid (names the field and the valid choices)."""


class DataError(TetherError):
    """A data file is missing or a row is malformed (names file:line)."""


class ResourceError(TetherError):
    """The cluster cannot provide what the config asks for (names the role)."""


class RewardError(TetherError):
    """A reward function raised, returned the wrong length, or returned non-numbers."""


class WorkerError(TetherError):
    """A worker actor failed or timed out (names the role and the call)."""


class WorkerDied(WorkerError):
    """An actor process died (names the role, and the rank for trainers)."""


class CheckpointError(TetherError):
    """A checkpoint file cannot be used (names the file and why)."""


class NumericalError(TetherError):
    """Too many consecutive steps with a non-finite loss or gradient."""
