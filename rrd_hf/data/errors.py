"""Exceptions raised by :mod:`rrd_hf.data`.

Every error says what is wrong and what to do about it. They all derive from :class:`DataError`
(a ``ValueError``), so callers can catch the whole family at once; a few also derive from the
built-in exception a generic caller would expect (``FileNotFoundError``, ``ConnectionError``).
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "UnknownDatasetError",
    "UnknownSplitError",
    "MissingColumnError",
    "CorruptImageError",
    "LabelOutOfRangeError",
    "DataSourceNotFoundError",
    "DatasetUnavailableError",
]


class DataError(ValueError):
    """Base class of every error raised by ``rrd_hf.data``."""


class UnknownDatasetError(DataError):
    """A short dataset name that is not in the registry (the message lists the known ones)."""


class UnknownSplitError(DataError):
    """A split that the source does not have (the message lists the available splits)."""


class MissingColumnError(DataError):
    """The image or label column is missing or has the wrong type (the message lists the columns present)."""


class CorruptImageError(DataError):
    """An image that cannot be decoded (the message names the row index and the source)."""


class LabelOutOfRangeError(DataError):
    """A label outside ``[0, num_labels)`` (the message names the offending value and row)."""


class DataSourceNotFoundError(DataError, FileNotFoundError):
    """A local path that does not exist or holds no readable data."""


class DatasetUnavailableError(DataError, ConnectionError):
    """A Hub dataset that cannot be reached (offline, no network, or not cached); pass a local path instead."""
