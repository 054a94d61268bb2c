"""htl_ray.paths: an output folder a user names is checked by writing in it before any work;
a file in the way or a place that cannot be written is a UserError naming the option."""

from __future__ import annotations

import pytest

from htl_ray.errors import UserError
from htl_ray.paths import check_writable_dir


def test_an_existing_folder_is_returned_and_left_as_it_was(tmp_path):
    (tmp_path / "kept.txt").write_text("x")
    assert check_writable_dir(str(tmp_path), "--out") == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == ["kept.txt"]       # the probe is gone


def test_a_folder_yet_to_be_made_is_probed_in_its_nearest_existing_parent(tmp_path):
    target = tmp_path / "a" / "b" / "c"
    assert check_writable_dir(target, "run.storage_path") == target
    assert not (tmp_path / "a").exists()                     # checked, not created
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_the_folder_should_be_names_the_option(tmp_path):
    f = tmp_path / "results.csv"
    f.write_text("x")
    with pytest.raises(UserError, match=rf"^--out {f}: exists and is not a folder$"):
        check_writable_dir(f, "--out")
    with pytest.raises(UserError, match=rf"^--out {f / 'sub'}: {f} is a file, not a folder$"):
        check_writable_dir(f / "sub", "--out")


def test_a_place_no_file_can_be_written_names_the_option_and_the_folder():
    # /proc refuses new files, also to root (permission bits would not)
    with pytest.raises(UserError, match=r"^sweep.storage_path /proc/htl-ray-out/x: cannot "
                                        r"write in /proc \(.+\)$"):
        check_writable_dir("/proc/htl-ray-out/x", "sweep.storage_path")
