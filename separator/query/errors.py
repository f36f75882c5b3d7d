"""Errors of the latent embedding processor (query -> condition vector)."""
from __future__ import annotations

__all__ = ["QueryError", "NoUsableAudioError", "EmbeddingError", "UnknownTextBackendError"]


class QueryError(ValueError):
    """A query cannot be turned into a condition vector (empty, unknown label without a text path, ...)."""


class NoUsableAudioError(QueryError):
    """A query audio file has no segment loud enough to be used (silent or nearly silent file)."""


class EmbeddingError(QueryError):
    """A saved condition file is malformed, or its dimension does not fit the model it is used with."""


class UnknownTextBackendError(QueryError):
    """A text-encoder spec names a backend that does not exist."""
