"""Errors of the Triton deployment; all derive from `hps.errors.HpsError`."""

from __future__ import annotations

from hps.errors import HpsError, KeyInputError


class RepositoryError(HpsError):
    """A model repository cannot be built, read or converted; the message names the path."""


class ServerError(HpsError):
    """tritonserver cannot be found, started, reached or stopped; the message names the command or URL."""


class RequestError(KeyInputError):
    """An inference request to an hps model is unusable (dtype, shapes, counts); sent back as an error response."""
