"""The two ways publishing fails: the folder cannot be published, or the Hub refused it."""

from __future__ import annotations

__all__ = ["ExportError", "HubPublishError"]


class HubPublishError(RuntimeError):
    """The Hub refused or could not be reached; the local checkpoint was not modified."""


class ExportError(ValueError):
    """The checkpoint folder cannot be published as it is (missing or inconsistent files)."""
