"""The run directory: its state file (one reader, one atomic writer) and how checkpoints are
found in it, without torch."""

import json

import pytest
import torch

from htl_ray.checkpoints import save_checkpoint
from htl_ray.config import ConfigError
from htl_ray.errors import UserError
from htl_ray.run_dir import LAYOUT, PER_SAMPLE_FILE, STATE_FILE, RunDir, RunState


def _save(directory, epoch, dice):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(directory, model, opt, None, epoch=epoch,
                    metrics={"epoch": epoch, "val/dice": dice})


def test_best_checkpoint_is_read_from_disk_with_its_metrics(tmp_path):
    assert RunDir(tmp_path).best_checkpoint("val/dice") is None
    for name, epoch, dice in (("a", 0, 0.5), ("b", 1, 0.8), ("c", 2, 0.8), ("d", 3, 0.6)):
        _save(tmp_path / f"checkpoint_{name}", epoch, dice)
    directory, metrics = RunDir(tmp_path).best_checkpoint("val/dice")
    assert directory == tmp_path / "checkpoint_c"           # ties go to the later epoch
    assert metrics == {"epoch": 2, "val/dice": 0.8}
    assert RunDir(tmp_path).best_checkpoint("val/iou") is None      # no checkpoint has that metric
    # the report needs per-image metrics: only checkpoints holding that file compete
    (tmp_path / "checkpoint_b" / PER_SAMPLE_FILE).write_bytes(b"")
    (tmp_path / "checkpoint_d" / PER_SAMPLE_FILE).write_bytes(b"")
    assert RunDir(tmp_path).best_checkpoint("val/dice", require=PER_SAMPLE_FILE)[0] == \
        tmp_path / "checkpoint_b"
    assert RunDir(tmp_path).best_checkpoint("val/dice", require="missing.file") is None


def test_the_best_checkpoint_is_by_the_runs_own_metric(tmp_path):
    """Without a metric, "best" means the run's train.checkpoint_metric (val/dice without a
    state file)."""
    for name, epoch, dice in (("a", 0, 0.9), ("b", 1, 0.5)):
        _save(tmp_path / f"checkpoint_{name}", epoch, dice)
    (tmp_path / "checkpoint_b" / "meta.json").write_text(json.dumps(
        {"epoch": 1, "metrics": {"epoch": 1, "val/dice": 0.5, "val/iou": 0.7}}))
    assert RunDir(tmp_path).best_checkpoint()[0] == tmp_path / "checkpoint_a"
    RunDir(tmp_path).write_state(RunState(config={"train": {"checkpoint_metric": "val/iou"}}))
    assert RunDir(tmp_path).best_checkpoint()[0] == tmp_path / "checkpoint_b"


def test_the_state_file_round_trips_and_keeps_keys_it_does_not_know(tmp_path):
    run = RunDir(tmp_path / "run")
    assert run.state() is None and not run.has_state()
    with pytest.raises(ConfigError, match=f"--resume {run.path}: no {STATE_FILE} there; "
                                          "not a run directory"):
        run.require_state("--resume")
    state = RunState(mlflow_run_id="abc", tracking_uri="sqlite:////x.db", run_dir=str(run.path),
                     config={"run": {"name": "run"}}, input_size=[64, 64])
    run.write_state(state)
    assert run.state() == state
    assert [p.name for p in run.path.iterdir()] == [STATE_FILE]     # no temporary file left
    raw = json.loads(run.state_file.read_text())
    raw["written_by_a_newer_version"] = 1
    run.state_file.write_text(json.dumps(raw))
    again = run.state()
    assert again.extra == {"written_by_a_newer_version": 1}
    assert json.loads(json.dumps(again.to_json())) == raw          # written back unchanged


@pytest.mark.parametrize("text", ['{"mlflow_run_id": ', "[1, 2]"])
def test_a_cut_or_foreign_state_file_is_one_error_naming_it(tmp_path, text):
    (tmp_path / STATE_FILE).write_text(text)
    with pytest.raises(UserError, match=f"{tmp_path / STATE_FILE}: not"):
        RunDir(tmp_path).state()


def test_every_file_the_run_directory_writes_is_in_its_layout():
    """The layout the reference prints names every path RunDir hands out."""
    run = RunDir("/r")
    named = {run.state_file, run.config_file, run.outbox_dir, run.model_dir, run.diverged_file,
             run.htl_version_file(3), run.snapshot_file(3)}
    patterns = [p.rstrip("/").replace("NNNN", "0003") for p in LAYOUT]
    for path in named:
        rel = str(path.relative_to("/r"))
        assert rel in patterns, rel
    assert f"checkpoint_*/{PER_SAMPLE_FILE}" in LAYOUT


def test_an_empty_record_is_no_run_and_a_state_without_its_mlflow_run_is_named(tmp_path):
    (tmp_path / STATE_FILE).write_text("{}")
    assert RunDir(tmp_path).state() is None
    with pytest.raises(ConfigError, match="not a run directory"):
        RunDir(tmp_path).require_state()
    (tmp_path / STATE_FILE).write_text(json.dumps({"mlflow_run_id": "abc", "config": {}}))
    state = RunDir(tmp_path).state()
    assert state.tracking_uri is None and state.dataset_fingerprint is None
    with pytest.raises(ConfigError, match=r"sync: .*htl_run.json: records no MLflow run"):
        RunDir(tmp_path).mlflow_run("sync:")
    RunDir(tmp_path).write_state(RunState(mlflow_run_id="abc", tracking_uri="sqlite:////m.db"))
    assert RunDir(tmp_path).mlflow_run() == ("sqlite:////m.db", "abc")
