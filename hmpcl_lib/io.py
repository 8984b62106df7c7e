"""Atomic file output: a reader never sees a half-written file, a crash never replaces a good one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, path: str | os.PathLike, **kwargs) -> Path:
    """Write `table` to `path` via a temp file + rename (deterministic: no timestamps in the file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, **kwargs)
    return path


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed (`chunk` is kept for callers; hashlib.file_digest picks its own buffer)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

