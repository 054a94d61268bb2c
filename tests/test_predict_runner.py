"""htl_ray.predict.runner: the parts of `htl-ray predict` around the actor pool, on real files —
argument checks that refuse before anything is read or created (and a failed start that leaves
no empty --out behind), the output folder probe, the settings that lock a folder to one model,
rows of earlier runs (finished table + appended lines, one cut short), which images count as
done, the progress line, and how the table, CSV and report.json are finished, including rows of
images no longer in INPUT. The streaming pool itself needs Ray and a model: test_predict.py runs
it end to end; nothing here starts Ray."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from model_files import small_model, small_model_config
from PIL import Image

from htl_ray.config import ConfigError
from htl_ray.inference import ModelBundle
from htl_ray.predict.actor import PredictSpec
from htl_ray.predict.inputs import Inputs
from htl_ray.predict.runner import (
    CSV_FILE,
    PARTIAL_FILE,
    REPORT_FILE,
    SETTINGS_FILE,
    TABLE_FILE,
    Progress,
    _finish,
    _stat,
    check_same_settings,
    done_ids,
    model_settings,
    predict,
    read_rows,
    writable_folder,
    write_settings,
)


@pytest.mark.parametrize("kwargs, message", [
    ({"risk": "vibes"}, "--risk vibes: expected one of h, tta, entropy, uncertain, "
                        "tta+uncertain, tta+h, tta+entropy"),
    ({"actors": 0}, "--actors and --batch-size must be at least 1"),
    ({"batch_size": 0}, "--actors and --batch-size must be at least 1"),
    ({"cpus_per_actor": 0}, "--cpus-per-actor must be > 0 and --gpus-per-actor >= 0"),
    ({"gpus_per_actor": -1}, "--cpus-per-actor must be > 0 and --gpus-per-actor >= 0"),
    ({"review_threshold": 1.5}, "--review-threshold 1.5: a risk is in [0, 1]"),
    ({"review_threshold": -0.01}, "--review-threshold -0.01: a risk is in [0, 1]"),
])
def test_bad_options_are_refused_before_anything_is_read_or_made(tmp_path, kwargs, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as err:
        predict(tmp_path / "no_model", tmp_path / "no_input", out, **kwargs)
    assert str(err.value) == message
    assert not out.exists()


def test_a_failed_start_removes_only_the_out_folder_it_made(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (20, 12)).save(src / "a.png")
    with pytest.raises(ConfigError, match="INPUT: .*missing does not exist"):
        predict(tmp_path / "no_model", tmp_path / "missing", tmp_path / "out")
    assert not (tmp_path / "out").exists()                    # INPUT is checked first
    with pytest.raises(ConfigError, match="MODEL: .*no_model does not exist"):
        predict(tmp_path / "no_model", src, tmp_path / "new" / "out")
    assert not (tmp_path / "new").exists()                    # made here, empty: removed
    (tmp_path / "mine").mkdir()
    with pytest.raises(ConfigError, match="MODEL:"):
        predict(tmp_path / "no_model", src, tmp_path / "mine")
    assert (tmp_path / "mine").is_dir()                       # the user's folder is kept


def test_writable_folder_makes_the_folder_or_names_why_it_cannot(tmp_path):
    out = writable_folder(tmp_path / "a" / "b")
    assert out.is_dir() and list(out.iterdir()) == []         # the probe file is gone
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ConfigError, match=f"^--out: {tmp_path / 'a_file'} is a file; give a "
                                          "folder for the masks$"):
        writable_folder(tmp_path / "a_file")
    with pytest.raises(ConfigError, match=f"^--out: cannot write in {tmp_path / 'a_file'}/sub "
                                          r"\(Not a directory\)$"):
        writable_folder(tmp_path / "a_file" / "sub")


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle(state=small_model(seed=1).state_dict(), model_config=small_model_config(),
                       input_size=(32, 48),
                       identity={"mlflow_run_id": "r1", "checkpoint_epoch": 2,
                                 "dataset_fingerprint": "fp", "checkpoint": "/somewhere"})


def test_model_settings_hold_what_must_not_change_between_runs(bundle):
    from htl_ray.models import state_checksum

    spec = PredictSpec(out_dir="o", risk="tta+h", review_threshold=0.3)
    settings = model_settings(bundle, spec)
    assert settings == {"identity": {"mlflow_run_id": "r1", "checkpoint_epoch": 2,
                                     "dataset_fingerprint": "fp"},
                        "weights_checksum": round(state_checksum(bundle.state), 3),
                        "input_size": [32, 48], "risk": "tta+h", "review_threshold": 0.3}
    assert settings["weights_checksum"] > 0
    json.dumps(settings)                                      # written as predict.json


def test_a_folder_filled_with_other_settings_is_refused_naming_what_changed(bundle, tmp_path):
    spec = PredictSpec(out_dir=str(tmp_path), risk="tta", review_threshold=0.129)
    settings = model_settings(bundle, spec)
    check_same_settings(tmp_path, settings)                   # an empty folder takes any
    write_settings(tmp_path, settings)
    check_same_settings(tmp_path, json.loads(json.dumps(settings)))
    write_settings(tmp_path, {**settings, "risk": "h"})       # never overwritten
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["risk"] == "tta"
    with pytest.raises(ConfigError) as err:
        check_same_settings(tmp_path, {**settings, "risk": "entropy"})
    assert str(err.value) == (f"--out: {tmp_path} holds predictions made with another risk "
                              f"({tmp_path / SETTINGS_FILE}); predict into a new folder, or "
                              "remove this one to start again")
    with pytest.raises(ConfigError, match="another review_threshold / weights_checksum "):
        check_same_settings(tmp_path, {**settings, "weights_checksum": 1.0,
                                       "review_threshold": 0.5})
    (tmp_path / SETTINGS_FILE).write_text("{cut")            # unreadable: nothing matches
    with pytest.raises(ConfigError, match="another identity / input_size / review_threshold / "
                                          "risk / weights_checksum "):
        check_same_settings(tmp_path, settings)


def test_rows_of_earlier_runs_are_the_table_then_the_lines_appended_since(tmp_path):
    assert read_rows(tmp_path).empty
    pd.DataFrame({"id": ["a", "b"], "risk": [0.1, 0.2]}).to_parquet(tmp_path / TABLE_FILE)
    lines = [json.dumps({"id": "b", "risk": 0.5}), json.dumps({"id": "c", "risk": 0.3}),
             '{"id": "d", "ri']                              # cut short: ignored
    (tmp_path / PARTIAL_FILE).write_text("\n".join(lines))
    rows = read_rows(tmp_path)
    assert rows.to_dict(orient="records") == [{"id": "a", "risk": 0.1}, {"id": "b", "risk": 0.5},
                                              {"id": "c", "risk": 0.3}]


def test_done_needs_the_same_unchanged_source_and_every_file_on_disk(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    image = tmp_path / "a.png"
    Image.new("RGB", (6, 6)).save(image)
    rows = pd.DataFrame([{"id": "a", "source": str(image), "source_stat": _stat(str(image))},
                         {"id": "s1", "source": "/ds#test/s1"},
                         {"id": "s2", "source": "/ds#val/s2"}])
    folder = Inputs(rows=[{"id": "a", "path": str(image)}], kind="folder")
    dataset = Inputs(rows=[{"id": "s1"}, {"id": "s2"}], kind="dataset", source="/ds",
                     split="test")
    assert done_ids(out, rows, folder, probabilities=False) == set()     # no mask yet
    for rid in ("a", "s1", "s2"):
        (out / f"{rid}_segmentation.png").write_bytes(b"")
    assert done_ids(out, rows, folder, probabilities=False) == {"a"}
    assert done_ids(out, rows, folder, probabilities=True) == set()      # map missing
    (out / "a_probability.png").write_bytes(b"")
    assert done_ids(out, rows, folder, probabilities=True) == {"a"}
    # a dataset row is done for its own split only
    assert done_ids(out, rows, dataset, probabilities=False) == {"s1"}
    assert done_ids(out, pd.DataFrame(), folder, probabilities=False) == set()


def test_progress_logs_when_due_and_at_the_end(caplog):
    caplog.set_level(logging.INFO, logger="htl_ray.predict.runner")
    progress = Progress(total=5, every_s=3600)
    progress.add(2, 0)
    assert caplog.messages == []                              # not due yet
    progress.add(3, 1)
    (line,) = caplog.messages
    assert line.startswith("[htl-ray] predict: 5/5 images (")
    assert line.endswith("/s), 1 unreadable")
    assert progress.done == 5 and progress.errors == 1


def _row(rid: str, source: str, risk: float, review: bool, **extra) -> dict:
    return {"mlflow_run_id": "r1", "tta": risk, "id": rid, "source": source, "height": 10,
            "width": 12, "area_fraction": 0.25, "risk": risk, "review": review,
            "review_reason": "risk" if review else "", "entropy": 0.1, "uncertain": 0.2,
            "checkpoint_epoch": 2, "dataset_fingerprint": "fp", **extra}


def test_finish_writes_the_sorted_table_csv_and_report_and_lists_stale_rows(bundle, tmp_path,
                                                                             caplog):
    caplog.set_level(logging.INFO, logger="htl_ray.predict.runner")
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame([_row("b", "/in/b.png", 0.5, True)]).to_parquet(out / TABLE_FILE)
    (out / PARTIAL_FILE).write_text("\n".join(json.dumps(r) for r in (
        _row("a", "/in/a.png", 0.05, False), _row("gone", "/in/gone.png", 0.9, True))) + "\n")
    inputs = Inputs(rows=[{"id": "b", "path": "/in/b.png"}, {"id": "a", "path": "/in/a.png"},
                          {"id": "bad", "path": "/in/bad.jpg"}], kind="folder",
                    skipped=[{"file": "/in/x.txt", "reason": "not an image file"}],
                    notes=["a note"])
    unreadable = [{"id": "bad", "file": "/in/bad.jpg", "reason": "bad.jpg: broken",
                   "stat": None}]
    outcome = _finish(out, inputs, bundle, unreadable, new_rows=1, skipped_done=1)

    table = pd.read_parquet(out / TABLE_FILE)
    assert table["id"].tolist() == ["a", "b"]                 # this INPUT's rows, by id
    assert list(table.columns) == ["id", "source", "height", "width", "area_fraction", "risk",
                                   "review", "review_reason", "tta", "entropy", "uncertain",
                                   "mlflow_run_id", "checkpoint_epoch", "dataset_fingerprint"]
    csv = pd.read_csv(out / CSV_FILE, keep_default_na=False)
    assert csv["id"].tolist() == ["a", "b"] and csv["risk"].tolist() == [0.05, 0.5]
    assert not (out / PARTIAL_FILE).exists()
    report = json.loads((out / REPORT_FILE).read_text())
    assert report == {"images": 3, "predicted_now": 1, "already_predicted": 1,
                      "unreadable": unreadable, "passed_over": inputs.skipped,
                      "notes": ["a note"],
                      "not_in_input_any_more": [{"id": "gone", "source": "/in/gone.png",
                                                 "mask": "gone_segmentation.png"}],
                      "model": bundle.identity}
    assert outcome.predicted == 1 and outcome.skipped_done == 1 and outcome.review == 1
    assert outcome.table["id"].tolist() == ["b", "a"]         # as read, before sorting
    assert outcome.unreadable == unreadable and outcome.passed_over == inputs.skipped
    text = "\n".join(caplog.messages)
    assert ("1 predicted now, 1 already there, 1 unreadable, 1 passed over (not images); "
            "1 of 2 flagged for review") in text
    assert "1 image(s) predicted earlier are no longer in INPUT (e.g. /in/gone.png)" in text
    assert "unreadable: bad.jpg: broken" in text


def test_finish_with_no_readable_image_writes_the_report_only(bundle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="htl_ray.predict.runner")
    inputs = Inputs(rows=[{"id": f"x{i}", "path": f"/in/x{i}.jpg"} for i in range(12)],
                    kind="folder")
    unreadable = [{"id": r["id"], "file": r["path"], "reason": f"{r['path']}: broken",
                   "stat": None} for r in inputs.rows]
    outcome = _finish(tmp_path, inputs, bundle, unreadable, new_rows=0, skipped_done=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [REPORT_FILE]
    assert outcome.review == 0 and outcome.table.empty
    assert len(json.loads((tmp_path / REPORT_FILE).read_text())["unreadable"]) == 12
    assert sum("unreadable: /in/x" in m for m in caplog.messages) == 10
    assert any(m.endswith(f"... 2 more in {tmp_path / REPORT_FILE}") for m in caplog.messages)

