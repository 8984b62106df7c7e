"""Dataverse listing + resumable, checksummed download against a real loopback HTTP server with injected faults.

Listings are built in the shape of real Dataverse answers: `dataFile.checksum.{type,value}` with MD5, SHA-1,
SHA-256 or SHA-512, and `md5` only when the type is MD5.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hmpcl_lib.sources.dataverse import (
    CHECKSUM_ALGORITHMS,
    Checksum,
    DataverseFile,
    check_part_sequence,
    download_file,
    download_year,
    files_for_year,
    list_dataset_files,
    parse_dataset_listing,
)
from hmpcl_lib.errors import DownloadError, InputError

DOI = "doi:10.7910/DVN/UG4SBD"
PAYLOAD = random.Random(0).randbytes(40_000)
FAST = dict(backoff=0.001, timeout=2.0)


@dataclass
class Faults:
    """What the server does to the next requests of a path (each list/counter is consumed per request)."""

    statuses: list[int] = field(default_factory=list)  # answer these statuses first, one per request
    drop_after: list[int] = field(default_factory=list)  # announce the full length, send N bytes, hang up
    wrong_bytes: int = 0  # serve corrupted bytes this many times
    hold: list[threading.Event] = field(default_factory=list)  # answer only once the test sets the event (timeouts)
    honour_range: bool = True


class FakeDataverse:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, Faults] = {}
        self.listing: dict | None = None
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)

    def add(self, file_id: int, data: bytes, faults: Faults | None = None) -> str:
        path = f"/api/access/datafile/{file_id}"
        self.files[path] = data
        self.faults[path] = faults or Faults()
        return path

    def requests_for(self, path: str) -> list[str | None]:
        return [rng for p, rng in self.requests if p == path]


def _handler(state: FakeDataverse):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            range_header = self.headers.get("Range")
            path = self.path.split("?")[0]
            state.requests.append((path, range_header))
            if path.startswith("/api/datasets/:persistentId/"):
                if state.listing is None or DOI not in self.path:
                    return self._send(404, b'{"status":"ERROR"}')
                return self._send(200, json.dumps(state.listing).encode())
            if path not in state.files:
                return self._send(404, b"not found")
            data, faults = state.files[path], state.faults[path]
            if faults.hold:
                faults.hold.pop(0).wait(60)  # the client has timed out and hung up long before the test sets it
            if faults.statuses:
                return self._send(faults.statuses.pop(0), b"try later")
            if faults.wrong_bytes:
                faults.wrong_bytes -= 1
                data = bytes(b ^ 0xFF for b in data[:10]) + data[10:]
            start = 0
            if range_header and faults.honour_range:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self._send(416, b"")
            body = data[start:]
            status = 206 if start else 200
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if faults.drop_after:
                self.wfile.write(body[: faults.drop_after.pop(0)])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """A client that timed out and hung up is part of the test; anything else is still reported."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server():
    state = FakeDataverse()
    httpd = QuietServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield state
    httpd.shutdown()
    httpd.server_close()


def _md5(data: bytes) -> Checksum:
    return Checksum("md5", hashlib.md5(data).hexdigest())


def _entry(file_id: int, name: str, data: bytes, checksum_type: str = "MD5") -> dict:
    """One `files[]` entry as Dataverse writes it (`md5` appears only for the MD5 type)."""
    value = hashlib.new(CHECKSUM_ALGORITHMS[checksum_type], data).hexdigest()
    data_file = {
        "id": file_id, "persistentId": "", "filename": name, "contentType": "application/octet-stream",
        "filesize": len(data), "rootDataFileId": -1, "checksum": {"type": checksum_type, "value": value},
        "tabularData": False,
    }
    if checksum_type == "MD5":
        data_file["md5"] = value
    return {"label": name, "restricted": False, "version": 1, "datasetVersionId": 35152, "dataFile": data_file}


def _listing(entries: list[tuple[int, str, bytes]], checksum_type: str = "MD5") -> dict:
    files = [_entry(i, n, d, checksum_type) for i, n, d in entries]
    return {"status": "OK", "data": {"id": 657658, "latestVersion": {"versionState": "RELEASED", "files": files}}}


# ---------------------------------------------------------------- listing


def test_listing_parsed_and_year_parts_ordered(server):
    server.listing = _listing([(3, "2019.ab", b"b"), (1, "README.txt", b"r"), (2, "2019.aa", b"a"), (4, "2018.aa", b"x")])
    files = list_dataset_files(server.base_url, DOI)
    assert DataverseFile(2, "2019.aa", 1, _md5(b"a")) in files and len(files) == 4
    assert [f.filename for f in files_for_year(files, 2019)] == ["2019.aa", "2019.ab"]
    assert [f.id for f in files_for_year(files, 2018)] == [4]


def test_listing_http_error_names_url(server):
    with pytest.raises(DownloadError, match=r"persistentId.*HTTP 404"):
        list_dataset_files(server.base_url, "doi:10.0/NOPE")


def test_listing_malformed_payload_is_input_error():
    with pytest.raises(InputError, match="latestVersion"):
        parse_dataset_listing({"data": {}})
    with pytest.raises(InputError, match="#1"):
        parse_dataset_listing({"data": {"latestVersion": {"files": [{"dataFile": {"id": 1, "filename": "a"}}, {}]}}})


def test_year_with_missing_part_or_no_part_is_input_error():
    files = [DataverseFile(1, "2019.aa", 1, None), DataverseFile(2, "2019.ac", 1, None)]
    with pytest.raises(InputError, match=r"year 2019: part 2019\.ab is missing"):
        files_for_year(files, 2019)
    with pytest.raises(InputError, match="2020"):
        files_for_year(files, 2020)


def test_part_sequence_beyond_z():
    check_part_sequence([f"{a}{b}" for a in "ab" for b in "abcdefghijklmnopqrstuvwxyz"], 2019)
    with pytest.raises(InputError, match=r"2019\.az"):
        check_part_sequence(["ay", "ba"] + [f"a{b}" for b in "abcdefghijklmnopqrstuvwx"], 2019)


# ---------------------------------------------------------------- download


def test_clean_download_verified_and_atomic(server, tmp_path):
    url = server.base_url + server.add(7, PAYLOAD)
    dest = download_file(url, tmp_path / "2019.aa", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "2019.aa.part").exists()


def test_resume_after_dropped_connection_uses_range(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(drop_after=[12_345]))
    dest = download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for(path) == [None, "bytes=12345-"]


def test_resume_when_server_ignores_range_restarts_cleanly(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(drop_after=[5_000], honour_range=False))
    dest = download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD  # a 200 answer to a Range request must not be appended
    assert server.requests_for(path) == [None, "bytes=5000-"]


def test_drop_detected_without_known_size(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(drop_after=[100, 200]))
    dest = download_file(server.base_url + path, tmp_path / "f", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for(path) == [None, "bytes=100-", "bytes=300-"]


def test_part_left_by_a_previous_run_is_resumed(server, tmp_path):
    path = server.add(7, PAYLOAD)
    (tmp_path / "f.part").write_bytes(PAYLOAD[:30_000])
    download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert (tmp_path / "f").read_bytes() == PAYLOAD
    assert server.requests_for(path) == ["bytes=30000-"]


def test_wrong_bytes_once_then_right(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(wrong_bytes=1))
    dest = download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for(path) == [None, None]  # corrupted part deleted, not resumed


def test_checksum_failure_fails_clearly_and_leaves_nothing(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(wrong_bytes=99))
    url = server.base_url + path
    with pytest.raises(DownloadError) as excinfo:
        download_file(url, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), retries=2, **FAST)
    assert url in str(excinfo.value) and "md5" in str(excinfo.value) and "3 attempts" in str(excinfo.value)
    assert list(tmp_path.iterdir()) == []


def test_size_mismatch_fails(server, tmp_path):
    path = server.add(7, PAYLOAD)
    with pytest.raises(DownloadError, match=f"size {len(PAYLOAD)} != expected {len(PAYLOAD) + 1}"):
        download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD) + 1, None, retries=1, **FAST)
    assert not (tmp_path / "f").exists()


def test_4xx_is_refused_without_retry(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(statuses=[403]))
    url = server.base_url + path
    with pytest.raises(DownloadError, match=rf"{url} -> HTTP 403.*refusing"):
        download_file(url, tmp_path / "f", **FAST)
    assert len(server.requests_for(path)) == 1
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(server.base_url + "/api/access/datafile/999", tmp_path / "g", **FAST)


def test_5xx_retried_then_succeeds(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(statuses=[503, 502, 503]))
    dest = download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests_for(path)) == 4


def test_5xx_forever_gives_up(server, tmp_path):
    path = server.add(7, PAYLOAD, Faults(statuses=[503] * 10))
    with pytest.raises(DownloadError, match="3 attempts.*HTTP 503"):
        download_file(server.base_url + path, tmp_path / "f", retries=2, **FAST)
    assert len(server.requests_for(path)) == 3


def test_timeout_is_retried(server, tmp_path):
    """The first request is never answered while the client waits (held on an event, not a sleep that a slow client
    could outlast), so the timeout must fire and the retry must fetch the file; the answered retries have a timeout
    generous enough for a loaded machine."""
    never = threading.Event()
    path = server.add(7, PAYLOAD, Faults(hold=[never]))
    try:
        dest = download_file(server.base_url + path, tmp_path / "f", len(PAYLOAD), backoff=0.001, timeout=1.0)
    finally:
        never.set()  # let the held handler thread finish
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests_for(path)) >= 2  # the held request timed out and was retried


def test_verified_dest_is_skipped_and_corrupt_dest_replaced(server, tmp_path):
    path = server.add(7, PAYLOAD)
    dest = tmp_path / "f"
    dest.write_bytes(PAYLOAD)
    download_file(server.base_url + path, dest, len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert server.requests_for(path) == []
    dest.write_bytes(b"garbage")
    download_file(server.base_url + path, dest, len(PAYLOAD), _md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD and len(server.requests_for(path)) == 1


def test_download_year_end_to_end(server, tmp_path):
    part_a, part_b = PAYLOAD[:25_000], PAYLOAD[25_000:]
    server.add(11, part_a, Faults(drop_after=[777]))
    server.add(12, part_b, Faults(statuses=[500]))
    server.listing = _listing([(12, "2019.ab", part_b), (11, "2019.aa", part_a), (13, "2020.aa", b"z")])
    paths = download_year(2019, tmp_path / "raw", base_url=server.base_url, doi=DOI, **FAST)
    assert [p.name for p in paths] == ["2019.aa", "2019.ab"]
    assert b"".join(p.read_bytes() for p in paths) == PAYLOAD
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["2019.aa", "2019.ab"]


def test_download_from_dataverse_file_uses_listing_checksum(server, tmp_path):
    server.add(21, PAYLOAD, Faults(wrong_bytes=99))
    entry = DataverseFile(21, "2019.aa", len(PAYLOAD), _md5(PAYLOAD))
    with pytest.raises(DownloadError, match="/api/access/datafile/21"):
        download_file(entry, tmp_path / "2019.aa", base_url=server.base_url, retries=1, **FAST)
    assert not Path(tmp_path / "2019.aa").exists()


# ---------------------------------------------------------------- checksum algorithms (as the listing declares them)


@pytest.mark.parametrize("checksum_type", ["SHA-1", "SHA-256", "SHA-512", "MD5"])
def test_year_verified_with_the_declared_algorithm_end_to_end(server, tmp_path, checksum_type):
    part_a, part_b = PAYLOAD[:25_000], PAYLOAD[25_000:]
    server.add(11, part_a, Faults(drop_after=[999]))  # resumed, then verified over the whole file
    server.add(12, part_b)
    server.listing = _listing([(11, "2019.aa", part_a), (12, "2019.ab", part_b)], checksum_type)
    files = list_dataset_files(server.base_url, DOI)
    algorithm = CHECKSUM_ALGORITHMS[checksum_type]
    assert files[0].checksum == Checksum(algorithm, hashlib.new(algorithm, part_a).hexdigest())
    paths = download_year(2019, tmp_path / "raw", base_url=server.base_url, doi=DOI, **FAST)
    assert b"".join(p.read_bytes() for p in paths) == PAYLOAD
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["2019.aa", "2019.ab"]


def test_wrong_sha1_is_retried_then_download_error(server, tmp_path):
    server.add(31, PAYLOAD, Faults(wrong_bytes=99))
    server.listing = _listing([(31, "2019.aa", PAYLOAD)], "SHA-1")
    with pytest.raises(DownloadError) as excinfo:
        download_year(2019, tmp_path / "raw", base_url=server.base_url, doi=DOI, retries=2, **FAST)
    message = str(excinfo.value)
    assert "/api/access/datafile/31" in message and "3 attempts" in message
    # the served bytes' SHA-1 against the declared one (an md5 compared with a SHA-1 value would fail every time)
    assert re.search(rf"sha1 [0-9a-f]{{40}} != expected {hashlib.sha1(PAYLOAD).hexdigest()}", message)
    assert len(server.requests_for("/api/access/datafile/31")) == 3
    assert list((tmp_path / "raw").iterdir()) == []


def test_sha1_file_already_in_place_is_verified_not_downloaded(server, tmp_path):
    path = server.add(32, PAYLOAD)
    server.listing = _listing([(32, "2019.aa", PAYLOAD)], "SHA-1")
    (tmp_path / "2019.aa").write_bytes(PAYLOAD)
    download_year(2019, tmp_path, base_url=server.base_url, doi=DOI, **FAST)
    assert server.requests_for(path) == []


def test_unknown_checksum_type_fails_at_listing_time_naming_the_file(server, tmp_path):
    path = server.add(41, PAYLOAD)
    server.listing = _listing([(40, "README.txt", b"r"), (41, "2019.aa", PAYLOAD)], "SHA-256")
    server.listing["data"]["latestVersion"]["files"][1]["dataFile"]["checksum"] = {"type": "CRC32", "value": "1c291ca3"}
    with pytest.raises(InputError) as excinfo:
        download_year(2019, tmp_path, base_url=server.base_url, doi=DOI, **FAST)
    err = excinfo.value
    assert err.record == "#1 (2019.aa)" and "unknown checksum type 'CRC32'" in err.reason and "SHA-1" in err.reason
    assert DOI.removeprefix("doi:") in err.source  # the listing URL
    assert server.requests_for(path) == []  # nothing downloaded


@pytest.mark.parametrize(
    ("checksum", "reason"),
    [
        ({"type": "SHA-1"}, "checksum must have a type and a value"),
        ({"type": "SHA-1", "value": "abc"}, "sha1 checksum 'abc' is not 40 hex digits"),
        ("0c4cd4ed411caf3f127131c4dadda0ef", "checksum must have a type and a value"),
    ],
)
def test_malformed_checksum_is_input_error(checksum, reason):
    listing = _listing([(1, "2019.aa", b"a")], "SHA-1")
    listing["data"]["latestVersion"]["files"][0]["dataFile"]["checksum"] = checksum
    with pytest.raises(InputError, match=reason) as excinfo:
        parse_dataset_listing(listing, source="listing.json")
    assert excinfo.value.record == "#0 (2019.aa)" and excinfo.value.source == "listing.json"


def test_md5_alone_and_no_checksum_are_accepted():
    listing = {"data": {"latestVersion": {"files": [
        {"dataFile": {"id": 1, "filename": "2019.aa", "filesize": 1, "md5": "0CC175B9C0F1B6A831C399E269772661"}},
        {"dataFile": {"id": 2, "filename": "2019.ab"}},
    ]}}}
    assert parse_dataset_listing(listing) == [
        DataverseFile(1, "2019.aa", 1, Checksum("md5", "0cc175b9c0f1b6a831c399e269772661")),
        DataverseFile(2, "2019.ab", None, None),
    ]


def test_deaccessioned_dataset_is_a_clear_error(server):
    # A deaccessioned dataset's answer (shape of 10.7910/DVN/P7UKWR): status OK, data without latestVersion.
    server.listing = {"status": "OK", "data": {
        "id": 3005799, "identifier": "DVN/P7UKWR", "persistentUrl": "https://doi.org/10.7910/DVN/P7UKWR",
        "protocol": "doi", "authority": "10.7910", "publisher": "Harvard Dataverse", "locks": [],
    }}
    with pytest.raises(InputError, match=r"DVN/P7UKWR has no latestVersion: it is deaccessioned") as excinfo:
        list_dataset_files(server.base_url, DOI)
    assert "persistentId" in excinfo.value.source
