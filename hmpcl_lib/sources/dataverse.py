"""Harvard Dataverse access for DeepPatent2: listing, and resumable, checksummed downloads.

Standard library only (urllib), so the data stage runs wherever Python does. A year of DeepPatent2 is tens of
GB split into `YYYY.aa`, `YYYY.ab`, ... parts; connections do drop on such transfers, so a download streams to
`<dest>.part`, resumes with an HTTP Range request, verifies size + checksum from the listing (with the algorithm the
listing declares: MD5, SHA-1, SHA-256 or SHA-512), and only then renames the file into place: a file at `dest` is
always complete and verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from hmpcl_lib.diskspace import download_bytes, require_free_disk
from hmpcl_lib.errors import DownloadError, InputError

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://dataverse.harvard.edu"
DEEPPATENT2_DOI = "doi:10.7910/DVN/UG4SBD"
_CHUNK = 1 << 20

# Dataverse's checksum types (`dataFile.checksum.type`) -> hashlib algorithm names.
CHECKSUM_ALGORITHMS = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-512": "sha512"}
_ALGORITHM_BY_KEY = {name.replace("-", ""): algorithm for name, algorithm in CHECKSUM_ALGORITHMS.items()}  # SHA1, sha-1


@dataclass(frozen=True)
class Checksum:
    """A declared digest: hashlib `algorithm` (`md5`, `sha1`, `sha256`, `sha512`) and lower-case hex `value`."""

    algorithm: str
    value: str

    def __post_init__(self) -> None:
        if self.algorithm not in CHECKSUM_ALGORITHMS.values():
            raise ValueError(f"unsupported checksum algorithm {self.algorithm!r}")
        value, digits = self.value.strip().lower(), 2 * hashlib.new(self.algorithm).digest_size
        if not re.fullmatch(rf"[0-9a-f]{{{digits}}}", value):
            raise ValueError(f"{self.algorithm} checksum {self.value!r} is not {digits} hex digits")
        object.__setattr__(self, "value", value)

    @classmethod
    def from_dataverse(cls, checksum_type: str, value: str) -> Checksum:
        """`checksum.{type,value}` of a listing (`SHA-1`, ...); an unknown type raises ValueError."""
        algorithm = _ALGORITHM_BY_KEY.get(str(checksum_type).strip().upper().replace("-", ""))
        if algorithm is None:
            raise ValueError(f"unknown checksum type {checksum_type!r} (known: {', '.join(CHECKSUM_ALGORITHMS)})")
        return cls(algorithm, str(value))

    def of_file(self, path: str | os.PathLike) -> str:
        """The hex digest of `path` with this algorithm."""
        with open(path, "rb") as f:
            return hashlib.file_digest(f, self.algorithm).hexdigest()


@dataclass(frozen=True)
class DataverseFile:
    """One file of a Dataverse dataset, as the listing describes it."""

    id: int
    filename: str
    filesize: int | None
    checksum: Checksum | None


class _Retryable(Exception):
    """A transient failure (5xx, timeout, dropped connection, bad bytes): worth another attempt."""


# ---------------------------------------------------------------- part names (YYYY.aa, YYYY.ab, ...)


def part_suffix(name: str, year: int | str) -> str | None:
    """The split suffix of `name` if it is a part of `year` (`2019.ab` -> `ab`), else None."""
    match = re.fullmatch(rf"{year}\.([a-z]{{2}})", name)
    return match.group(1) if match else None


def suffix_index(suffix: str) -> int:
    """Position of a 2-letter `split` suffix in its sequence: aa -> 0, ab -> 1, ..., az -> 25, ba -> 26."""
    index = 0
    for char in suffix:
        index = index * 26 + (ord(char) - ord("a"))
    return index


def _suffix_at(index: int, width: int) -> str:
    chars = []
    for _ in range(width):
        index, rest = divmod(index, 26)
        chars.append(chr(ord("a") + rest))
    return "".join(reversed(chars))


def check_part_sequence(suffixes: list[str], year: int | str, source: str | None = None) -> None:
    """Raise InputError unless sorted `suffixes` are exactly aa, ab, ... with no gap (a gap corrupts the year)."""
    if not suffixes:
        raise InputError(f"year {year}: no parts found", source=source)
    widths = {len(s) for s in suffixes}
    if len(widths) != 1:
        raise InputError(f"year {year}: part suffixes of mixed length {sorted(suffixes)}", source=source)
    width = widths.pop()
    ordered = sorted(suffixes, key=suffix_index)
    for expected_index, suffix in enumerate(ordered):
        expected = _suffix_at(expected_index, width)
        if suffix != expected:
            raise InputError(
                f"year {year}: part {year}.{expected} is missing (found {', '.join(ordered)})", source=source
            )


# ---------------------------------------------------------------- listing


def parse_dataset_listing(payload: dict, source: str = "dataverse listing") -> list[DataverseFile]:
    """`data.latestVersion.files[].dataFile` of a Dataverse dataset JSON -> DataverseFile list.

    The checksum is `dataFile.checksum.{type,value}` (`md5` alone, which Dataverse adds only for MD5, is accepted
    too); an unknown checksum type is an InputError naming the file, raised here, before anything is downloaded.
    A dataset without `latestVersion` (deaccessioned, or no version visible) is an InputError too.
    """
    data = payload.get("data") if isinstance(payload, dict) else None
    if not isinstance(data, dict):
        status = payload.get("status") if isinstance(payload, dict) else None
        raise InputError(f"no data object in the listing (status {status!r})", source=source)
    if "latestVersion" not in data:
        dataset = data.get("persistentUrl") or data.get("identifier") or data.get("id", "?")
        raise InputError(
            f"dataset {dataset} has no latestVersion: it is deaccessioned or has no released version visible "
            "to this request, so there are no files to list",
            source=source,
        )
    try:
        entries = data["latestVersion"]["files"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"no data.latestVersion.files in the listing ({exc!r})", source=source) from None
    if not isinstance(entries, list):
        raise InputError("data.latestVersion.files is not a list", source=source)
    files = []
    for position, entry in enumerate(entries):
        data_file = entry.get("dataFile") if isinstance(entry, dict) else None
        if not isinstance(data_file, dict) or "id" not in data_file or "filename" not in data_file:
            raise InputError("entry has no dataFile.id/filename", source=source, record=f"#{position}")
        record = f"#{position} ({data_file['filename']})"
        try:
            size = data_file.get("filesize")
            files.append(
                DataverseFile(
                    id=int(data_file["id"]),
                    filename=str(data_file["filename"]),
                    filesize=None if size is None else int(size),
                    checksum=_listed_checksum(data_file),
                )
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise InputError(f"bad dataFile fields: {exc}", source=source, record=record) from None
    return files


def _listed_checksum(data_file: dict) -> Checksum | None:
    declared = data_file.get("checksum")
    if declared is not None:
        if not isinstance(declared, dict) or not declared.get("type") or not declared.get("value"):
            raise ValueError(f"checksum must have a type and a value, got {declared!r}")
        return Checksum.from_dataverse(declared["type"], declared["value"])
    if data_file.get("md5"):  # older servers: md5 alone
        return Checksum("md5", str(data_file["md5"]))
    return None


def _open(url: str, opener: urllib.request.OpenerDirector | None, timeout: float, headers: dict | None = None):
    request = urllib.request.Request(url, headers={"User-Agent": "hmpcl", **(headers or {})})
    return (opener.open if opener else urllib.request.urlopen)(request, timeout=timeout)


def list_dataset_files(
    base_url: str = DEFAULT_BASE_URL,
    doi: str = DEEPPATENT2_DOI,
    session: urllib.request.OpenerDirector | None = None,
    timeout: float = 60.0,
) -> list[DataverseFile]:
    """List the files of the dataset's latest version. `session`: optional urllib opener (proxy, auth headers)."""
    url = f"{base_url.rstrip('/')}/api/datasets/:persistentId/?persistentId={urllib.parse.quote(doi, safe=':/')}"
    try:
        with _open(url, session, timeout) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"GET {url} -> HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise DownloadError(f"GET {url} failed: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DownloadError(f"GET {url}: listing is not JSON ({exc})") from None
    return parse_dataset_listing(payload, source=url)


def files_for_year(files: list[DataverseFile], year: int | str) -> list[DataverseFile]:
    """The parts `YYYY.aa`, `YYYY.ab`, ... of one year, in concatenation order (gaps are an InputError)."""
    parts = {suffix: f for f in files if (suffix := part_suffix(f.filename, year)) is not None}
    if not parts:
        raise InputError(f"the dataset has no parts for year {year}", source="dataverse listing")
    check_part_sequence(list(parts), year, source="dataverse listing")
    return [parts[s] for s in sorted(parts, key=suffix_index)]


# ---------------------------------------------------------------- download


def datafile_url(base_url: str, file_id: int) -> str:
    return f"{base_url.rstrip('/')}/api/access/datafile/{file_id}"


def _verify(path: Path, expected_size: int | None, expected: Checksum | None) -> str | None:
    """None when `path` matches the expected size and checksum, else what is wrong."""
    size = path.stat().st_size
    if expected_size is not None and size != expected_size:
        return f"size {size} != expected {expected_size}"
    if expected is not None and (actual := expected.of_file(path)) != expected.value:
        return f"{expected.algorithm} {actual} != expected {expected.value}"
    return None


def _content_range_start(header: str | None) -> int | None:
    match = re.match(r"bytes\s+(\d+)-", header or "")
    return int(match.group(1)) if match else None


def _fetch_into(url: str, part: Path, expected_size: int | None, opener, timeout: float, chunk: int) -> None:
    """Append the rest of `url` to `part` (Range from its current size); raises _Retryable or DownloadError."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset >= expected_size:
        if offset > expected_size:
            part.unlink()  # longer than the file can be: start over
            offset = 0
        else:
            return  # already all there; the caller verifies it
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with _open(url, opener, timeout, headers) as response:
            status = response.status
            if status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != offset:
                    raise _Retryable(f"server resumed at byte {start}, asked for {offset}")
                mode = "ab"
            else:  # 200: the server ignored Range and sends the whole file
                mode = "wb"
                if offset:
                    log.info("%s: server ignored Range, restarting from byte 0", url)
            announced = response.headers.get("Content-Length")
            received = 0
            with open(part, mode) as out:
                while block := response.read(chunk):
                    out.write(block)
                    received += len(block)
            if announced is not None and received < int(announced):
                raise _Retryable(f"connection dropped after {received} of {announced} bytes")
    except urllib.error.HTTPError as exc:
        if exc.code == 416:  # our part is not a prefix the server can extend: start over
            part.unlink(missing_ok=True)
            raise _Retryable("HTTP 416 Range Not Satisfiable") from None
        if 400 <= exc.code < 500:
            raise DownloadError(
                f"GET {url} -> HTTP {exc.code} {exc.reason}: refusing (a client error, retrying will not help)"
            ) from None
        raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, http.client.HTTPException, socket.timeout, ConnectionError, OSError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None


def download_file(
    url_or_file: str | DataverseFile,
    dest: str | os.PathLike,
    expected_size: int | None = None,
    expected_checksum: Checksum | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    max_backoff: float = 120.0,
    base_url: str = DEFAULT_BASE_URL,
    opener: urllib.request.OpenerDirector | None = None,
    timeout: float = 60.0,
    chunk_size: int = _CHUNK,
) -> Path:
    """Download to `dest` (resume, verify, atomic rename); skip if `dest` is already there and verified.

    A DataverseFile supplies its URL, size and checksum (any of the listing's algorithms). Transient failures are retried up to `retries` times with
    exponential backoff (`backoff * 2**attempt` s); a 4xx or a final failure raises DownloadError naming the URL.
    """
    if isinstance(url_or_file, DataverseFile):
        url = datafile_url(base_url, url_or_file.id)
        expected_size = url_or_file.filesize if expected_size is None else expected_size
        expected_checksum = url_or_file.checksum if expected_checksum is None else expected_checksum
    else:
        url = url_or_file
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")

    if dest.exists():
        problem = _verify(dest, expected_size, expected_checksum)
        if problem is None:
            log.info("%s already downloaded and verified", dest)
            return dest
        log.warning("%s exists but %s: downloading again", dest, problem)
        dest.unlink()

    last_problem = "no attempt made"
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(max_backoff, backoff * 2 ** (attempt - 1)))
        try:
            _fetch_into(url, part, expected_size, opener, timeout, chunk_size)
        except _Retryable as exc:
            last_problem = str(exc)
            log.warning("GET %s attempt %d/%d: %s", url, attempt + 1, retries + 1, exc)
            continue
        problem = _verify(part, expected_size, expected_checksum)
        if problem is None:
            os.replace(part, dest)
            return dest
        last_problem = f"downloaded file fails verification: {problem}"
        log.warning("GET %s attempt %d/%d: %s", url, attempt + 1, retries + 1, last_problem)
        part.unlink()  # the transfer completed (drops raise _Retryable) yet is wrong: resuming would keep bad bytes
    raise DownloadError(f"GET {url} -> {dest} failed after {retries + 1} attempts: {last_problem}")


def _size_on_disk(dest: Path) -> int:
    """Bytes of `dest` already here: the finished file, else its `.part` (0 when neither exists)."""
    for path in (dest, dest.with_name(dest.name + ".part")):
        if path.is_file():
            return path.stat().st_size
    return 0


def download_year(
    year: int,
    dest_dir: str | os.PathLike,
    base_url: str = DEFAULT_BASE_URL,
    doi: str = DEEPPATENT2_DOI,
    session: urllib.request.OpenerDirector | None = None,
    **download_kwargs,
) -> list[Path]:
    """Download (or confirm) every part of `year` into `dest_dir`; returns the part paths in order. Fails before
    writing anything when the disk cannot hold what is still missing."""
    parts = files_for_year(list_dataset_files(base_url, doi, session=session), year)
    dest_dir = Path(dest_dir)
    have = [_size_on_disk(dest_dir / f.filename) for f in parts]
    require_free_disk(f"downloading year {year} ({len(parts)} parts)", dest_dir,
                      download_bytes([f.filesize for f in parts], have))
    return [
        download_file(f, dest_dir / f.filename, base_url=base_url, opener=session, **download_kwargs) for f in parts
    ]
