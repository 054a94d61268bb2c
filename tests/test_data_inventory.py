"""htl_ray.data.inventory: every file under a source folder that ingestion did not use is
listed with why — in walk order, real folders before the folders links lead to, a file used
under another path (a hard link) not listed, the output folder not walked, and each kind of
link trouble named rather than followed."""

from __future__ import annotations

import os
from pathlib import Path

from htl_ray.data.inventory import IGNORED, ignored_files


def _listing(src: Path, accounted=(), skip=()) -> list[tuple[str, str]]:
    return [(str(Path(x["file"]).relative_to(src)), x["reason"])
            for x in ignored_files(src, accounted, skip=skip)]


def test_files_not_used_are_listed_with_their_reason_in_walk_order(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    used = [src / "images" / "a.png", src / "masks" / "a.png"]
    for p in used:
        p.write_bytes(b"png")
    (src / "images" / "ISIC_1_superpixels.png").write_bytes(b"png")
    (src / "images" / "Thumbs.db").write_bytes(b"\0")
    (src / "images" / "._a.png").write_bytes(b"\0")
    (src / "images" / "b.HEIC").write_bytes(b"heic")
    (src / "README.txt").write_text("how the data was collected")
    (src / "masks" / "old.tif").write_bytes(b"tif")

    assert _listing(src, used) == [
        ("README.txt", "not_read_by_layout"),
        ("images/._a.png", "hidden"),
        ("images/ISIC_1_superpixels.png", "superpixels"),
        ("images/Thumbs.db", "hidden"),
        ("images/b.HEIC", "not_read_by_layout"),
        ("masks/old.tif", "not_read_by_layout"),
    ]
    details = {Path(x["file"]).name: x["detail"] for x in ignored_files(src, used)}
    assert details["README.txt"] == IGNORED["not_read_by_layout"]
    assert details["b.HEIC"].startswith("an image in a folder or under a name the layout")
    assert details["Thumbs.db"] == IGNORED["hidden"]
    assert details["ISIC_1_superpixels.png"] == IGNORED["superpixels"]


def test_nothing_is_listed_when_every_file_is_accounted_for(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    assert ignored_files(tmp_path, [tmp_path / "a.png"]) == []


def test_a_file_used_under_another_path_is_the_same_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(b"x")
    os.link(src / "a.png", src / "hardlink.png")
    os.symlink(src / "a.png", src / "symlink.png")
    # accounted by one name: its other names are that file, not files left out
    assert _listing(src, [src / "a.png"]) == []
    # a path that does not exist accounts for nothing (and is no error)
    assert _listing(src, [tmp_path / "gone.png"]) == [
        ("a.png", "not_read_by_layout"), ("hardlink.png", "not_read_by_layout"),
        ("symlink.png", "not_read_by_layout")]


def test_the_output_folder_inside_the_source_is_not_walked(tmp_path):
    src = tmp_path / "src"
    (src / "out" / "quarantine").mkdir(parents=True)
    (src / "out" / "records.parquet").write_bytes(b"PAR1")
    (src / "out" / "quarantine" / "x.png").write_bytes(b"png")
    (src / "notes.txt").write_text("x")
    assert _listing(src, skip=[src / "out"]) == [("notes.txt", "not_read_by_layout")]
    assert len(_listing(src)) == 3


def test_links_to_folders_are_walked_after_the_real_ones_once_each(tmp_path):
    src, elsewhere = tmp_path / "src", tmp_path / "elsewhere"
    (src / "b").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "far.txt").write_text("x")
    (src / "b" / "near.txt").write_text("x")
    os.symlink(elsewhere, src / "a_link")            # sorts first, walked last
    os.symlink(src / "b", src / "c_again")           # a folder already listed
    os.symlink(elsewhere, src / "d_again")           # listed by then through a_link
    listing = ignored_files(src, [])
    assert [(str(Path(x["file"]).relative_to(src)), x["reason"]) for x in listing] == [
        ("b/near.txt", "not_read_by_layout"),
        ("a_link/far.txt", "not_read_by_layout"),
        ("c_again", "second_path"),
        ("d_again", "second_path"),
    ]
    assert listing[2]["detail"] == f"leads to {src / 'b'}, already listed"


def test_link_loops_and_broken_links_are_named_not_followed(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    os.symlink(src, src / "sub" / "up")                          # back into its own parent
    os.symlink(src / "sub", src / "sub" / "self")                # into the folder holding it
    os.symlink(src / "y", src / "x")                             # a cycle of two links
    os.symlink(src / "x", src / "y")
    os.symlink(tmp_path / "deleted.png", src / "broken.png")
    listing = {Path(x["file"]).name: (x["reason"], x["detail"])
               for x in ignored_files(src, [])}
    assert listing == {
        "broken.png": ("broken_link", f"link to {tmp_path / 'deleted.png'}, which does not "
                                      "exist"),
        "x": ("link_loop", "a cycle of symbolic links"),
        "y": ("link_loop", "a cycle of symbolic links"),
        "up": ("link_loop", f"leads back to {src}, which contains it"),
        "self": ("link_loop", f"leads back to {src / 'sub'}, which contains it"),
    }


def test_every_reason_has_a_meaning():
    assert set(IGNORED) == {"not_read_by_layout", "superpixels", "hidden", "link_loop",
                            "second_path", "broken_link", "unreadable"}
    assert all(len(meaning) > 20 for meaning in IGNORED.values())
