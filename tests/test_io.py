"""hmpcl_lib.io: atomic folders (the index, the pixel store, an extracted year and saved variant results use it)."""

from __future__ import annotations

import pytest

from hmpcl_lib.io import atomic_dir


def test_atomic_dir_swaps_a_complete_folder_in_and_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the good one is untouched
    with atomic_dir(target) as tmp:
        (tmp / "c.txt").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]  # replaced whole, not merged
    with atomic_dir(target, replace=False) as tmp:  # someone finished the same content first: theirs is kept
        (tmp / "d.txt").write_text("4")
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp or old folder left beside it
