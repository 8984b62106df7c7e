"""Atomic output: a reader never sees a half-written file or folder, a crash never replaces a good one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
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


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; when the block succeeds it takes `target`'s place, else it is
    removed. An existing `target` is moved aside and removed after the swap (`replace=True`), or kept when
    `replace=False` (another process finished the same content first: theirs is used)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists() and not replace:
            return
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}.tmp"
            os.replace(target, old)
        try:
            os.replace(tmp, target)
        except OSError:  # a concurrent writer put its own target in place between the check and the rename
            if replace or not target.exists():
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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



MARKDOWN_WIDTH = 65_535  # polars' largest table width; wider values make it panic


def markdown_table(df, max_rows: int = 10, float_digits: int = 4, max_chars: int = 60) -> str:
    """The first `max_rows` rows as a GitHub-flavoured markdown table, rendered by polars itself (pipes and line
    breaks in text escaped, long text cut at `max_chars`, missing values shown as `null`)."""
    import polars as pl

    head = df.head(max_rows).with_columns(
        pl.col(pl.String).str.replace_all("|", "\\|", literal=True).str.replace_all("\n", " ", literal=True))
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                   tbl_rows=max(max_rows, 1), tbl_cols=-1, float_precision=float_digits, fmt_str_lengths=max_chars,
                   tbl_width_chars=MARKDOWN_WIDTH, fmt_table_cell_list_len=-1):
        return str(head)
