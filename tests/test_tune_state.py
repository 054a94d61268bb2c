"""A sweep directory's state file: one reader, one writer that replaces the file whole, the
keys older versions wrote, and one error for a file that is not a sweep state."""

from __future__ import annotations

import json
import threading

import pytest

import htl_ray.tune.state as state
from htl_ray.config import ConfigError
from htl_ray.tune.state import LAYOUT, STATE_FILE, SweepState


def test_a_state_round_trips_in_the_keys_older_versions_wrote(tmp_path):
    path = tmp_path / "sweep" / STATE_FILE
    full = SweepState("p1", tracking_uri="sqlite:///m.db", sweep_file="/s.yaml",
                      stops_closed=True, told_archived_trials=("a", "b"), from_archive="/arc")
    state.write(path, full)
    assert json.loads(path.read_text()) == {
        "parent_run_id": "p1", "tracking_uri": "sqlite:///m.db", "sweep_file": "/s.yaml",
        "stops_closed_as_they_happen": True, "told_archived_trials": ["a", "b"],
        "from_archive": "/arc"}
    assert state.read(path) == full
    # unset fields are left out, as before; an older file with only its parent run reads
    state.write(path, SweepState("p2"))
    assert json.loads(path.read_text()) == {"parent_run_id": "p2"}
    assert state.read(path) == SweepState("p2")
    assert state.read_in(tmp_path / "sweep") == SweepState("p2")
    assert state.read_in(tmp_path / "none") is None


def test_update_changes_some_fields_and_keeps_the_rest_and_unknown_keys(tmp_path):
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps({"parent_run_id": "p", "tracking_uri": "u", "newer_key": [1]}))
    new = state.update(path, stops_closed=True, told_archived_trials=["t1"])
    assert new.told_archived_trials == ("t1",) and new.tracking_uri == "u"
    assert json.loads(path.read_text()) == {
        "parent_run_id": "p", "tracking_uri": "u", "newer_key": [1],
        "stops_closed_as_they_happen": True, "told_archived_trials": ["t1"]}
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]     # no temporary file left


@pytest.mark.parametrize(("text", "message"), [
    ('{"parent_run_id": "ab', "not readable as JSON"),
    ("[1, 2]", r"not a sweep state \(expected a JSON object\)"),
    ("{}", r"not a sweep state \('parent_run_id' should be a string, found None\)"),
    ('{"parent_run_id": 3}', "'parent_run_id' should be a string, found 3"),
    ('{"parent_run_id": "p", "tracking_uri": ["x"]}', "'tracking_uri' should be a string"),
    ('{"parent_run_id": "p", "told_archived_trials": "a"}',
     "'told_archived_trials' should be a list of trial ids"),
])
def test_a_file_that_is_not_a_sweep_state_is_one_error_naming_it(tmp_path, text, message):
    path = tmp_path / STATE_FILE
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        state.read(path)
    assert str(info.value).startswith(str(path))


def test_readers_never_see_half_a_file_while_it_is_updated(tmp_path):
    """The protocol's archive thread reads the state while the sweep updates it."""
    path = tmp_path / STATE_FILE
    state.write(path, SweepState("p", tracking_uri="u" * 20000))
    errors: list[Exception] = []
    done = threading.Event()

    def read_on() -> None:
        while not done.is_set():
            try:
                assert state.read(path).parent_run_id == "p"
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)

    reader = threading.Thread(target=read_on)
    reader.start()
    try:
        for i in range(200):
            state.update(path, told_archived_trials=[f"t{j}" for j in range(i % 7)])
    finally:
        done.set()
        reader.join()
    assert errors == []


def test_the_layout_names_every_file_the_sweep_writes():
    from htl_ray.tune.ablation import ablation_run_name
    from htl_ray.tune.confirm import confirm_run_name
    from htl_ray.tune.search import TUNE_DIR

    assert STATE_FILE in LAYOUT and all(isinstance(v, str) and v for v in LAYOUT.values())
    # spelled as the code names them
    assert {f"{TUNE_DIR}/", "summary/", "runs/trial-<trial id>/",
            f"runs/{confirm_run_name('<group>', '<seed>')}/",
            f"runs/{ablation_run_name('<variant>', '<seed>')}/"} <= set(LAYOUT)


def test_an_empty_optional_field_reads_as_absent(tmp_path):
    """Older versions wrote "" for a tracking URI they left to the config."""
    path = tmp_path / STATE_FILE
    path.write_text(json.dumps({"parent_run_id": "p", "tracking_uri": ""}))
    assert state.read(path).tracking_uri is None
    path.write_text(json.dumps({"parent_run_id": ""}))
    with pytest.raises(ConfigError, match="parent_run_id"):
        state.read(path)
