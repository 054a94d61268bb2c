"""The user-facing commands, run as a user runs them."""

from htl_ray.cli import main
from htl_ray.data.schema import read_manifest


def test_synth_and_ingest_commands(tmp_path, capsys):
    assert main(["data", "synth", "--out", str(tmp_path / "s"), "--n", "30", "--size", "32",
                 "--fractions", "0.6,0.2,0.2"]) == 0
    assert read_manifest(tmp_path / "s")["split_counts"] == {"train": 18, "val": 6, "test": 6}
    assert "planted hard" in capsys.readouterr().out
    assert main(["data", "ingest", "--layout", "folder", str(tmp_path / "missing"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "source folder not found" in capsys.readouterr().err
