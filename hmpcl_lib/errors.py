"""Our own error types: every bad input surfaces as one of these, naming the file and record."""

from __future__ import annotations


class HmpclError(Exception):
    """Base class for every error this library raises on purpose."""


class InputError(HmpclError, ValueError):
    """Bad input data: says which file (`source`), which record, and what is wrong."""

    def __init__(self, reason: str, source: str | None = None, record: str | int | None = None):
        self.reason = reason
        self.source = None if source is None else str(source)
        self.record = None if record is None else str(record)
        where = ", ".join(p for p in (self.source and f"file {self.source}", self.record and f"record {self.record}") if p)
        super().__init__(f"{where}: {reason}" if where else reason)


class DownloadError(HmpclError):
    """A download failed in a way retrying will not fix (4xx, checksum mismatch after retries, ...)."""
