"""The search server's memory under large uploads of every image mode (issue 30): `benchmarks/search_load.py` at a
small size against the real `hmpcl serve` process. Its peak RSS stays within idle + 1 GiB and it answers only 200 or
503 (503 is the queue's answer when the machine is slow; the bound on memory does not depend on timing)."""

from __future__ import annotations

import json

import pytest

from benchmarks import search_load

pytestmark = pytest.mark.slow


def test_large_grey_rgb_and_palette_uploads_stay_within_idle_plus_one_gib(tmp_path):
    out = tmp_path / "load.json"
    assert search_load.main(["--large-clients", "8", "--large-requests", "3", "--large-side", "7000",
                             "--small-clients", "2", "--small-requests", "3", "--rounds", "1",
                             "--throughput-clients", "2", "--throughput-requests", "2", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peak_kib"] - result["idle_kib"] <= 2**20, result  # + 1 GiB
    for phase, kinds in result["statuses"].items():
        for name, statuses in kinds.items():
            assert set(statuses) <= {"200", "503"}, (phase, name, statuses)
            assert sum(statuses.values()) > 0
    assert sum(result["statuses"]["mixed"]["small drawing"].values()) == 6
