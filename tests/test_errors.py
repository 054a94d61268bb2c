"""htl_ray.errors: the user's error type, OS errors and exceptions shown as one line, and the
search for the user's mistake behind an exception wrapped by Ray (a task's RayTaskError, a
Train worker group's or controller's failure) or re-raised `from` it."""

from __future__ import annotations

import os

import pytest
from ray.exceptions import RayTaskError
from ray.train import ControllerError, WorkerGroupError

from htl_ray.errors import UserError, describe_os_error, find_user_error, first_line


def test_a_user_error_is_a_value_error():
    with pytest.raises(ValueError, match="^data.path: no dataset$"):
        raise UserError("data.path: no dataset")


def test_an_os_error_is_described_by_its_path_and_reason(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(OSError) as caught:
        open(missing)
    assert describe_os_error(caught.value) == f"{missing}: No such file or directory"

    with pytest.raises(OSError) as caught:                 # two paths: source → destination
        os.rename(missing, tmp_path / "other.csv")
    assert describe_os_error(caught.value) == (
        f"{missing} → {tmp_path / 'other.csv'}: No such file or directory")

    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as caught:
        os.mkdir(tmp_path / "file")
    assert describe_os_error(caught.value) == f"{tmp_path / 'file'}: File exists"


def test_an_os_error_without_a_path_is_its_reason():
    assert describe_os_error(OSError(28, "No space left on device")) == \
        "No space left on device"
    assert describe_os_error(OSError("the disk went away")) == "the disk went away"


def test_first_line_of_an_exception_or_a_text():
    assert first_line(RuntimeError("\n  first problem\nsecond line\nthird")) == "first problem"
    assert first_line("one\ntwo") == "one"
    assert first_line(KeyError()) == "KeyError"            # no message: the type's name
    assert first_line(ValueError("")) == "ValueError"
    assert first_line("x" * 500) == "x" * 200
    assert first_line("abcdef", limit=3) == "abc"


def test_the_user_error_itself_and_an_os_error_are_found():
    mistake = UserError("--out: not a folder")
    assert find_user_error(mistake) is mistake
    missing = FileNotFoundError(2, "No such file or directory", "data/x.png")
    assert find_user_error(missing) is missing
    assert find_user_error(None) is None
    assert find_user_error(RuntimeError("a bug")) is None


def test_a_mistake_re_raised_from_is_found_but_one_merely_handled_is_not():
    mistake = UserError("train.lr: expected > 0")
    try:
        try:
            raise mistake
        except UserError as exc:
            raise RuntimeError("training failed") from exc
    except RuntimeError as exc:
        assert find_user_error(exc) is mistake

    # a bug in an `except` branch is a bug: __context__ is not followed
    try:
        try:
            raise FileNotFoundError(2, "No such file or directory", "a.png")
        except FileNotFoundError:
            raise KeyError("typo in the handler") from None
    except KeyError as exc:
        assert exc.__context__ is not None
        assert find_user_error(exc) is None


def test_a_mistake_inside_ray_wrappers_is_found():
    mistake = UserError("data.path: records.parquet is not readable")
    task_error = RayTaskError("ingest_shard", "Traceback ...", mistake)
    assert find_user_error(task_error) is mistake

    missing = FileNotFoundError(2, "No such file or directory", "/data/records.parquet")
    group = WorkerGroupError("2 workers failed", {0: RuntimeError("NCCL timeout"),
                                                  1: RayTaskError("train_fn", "tb", missing)})
    assert find_user_error(group) is missing
    assert find_user_error(WorkerGroupError("1 worker failed", {0: ZeroDivisionError()})) \
        is None

    controller = ControllerError(mistake)
    assert find_user_error(controller) is mistake
    try:                                                    # and the whole chain re-raised
        raise RuntimeError("htl-ray train failed") from group
    except RuntimeError as exc:
        assert find_user_error(exc) is missing


def test_a_cycle_of_causes_ends_the_search():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__cause__, b.__cause__ = b, a
    assert find_user_error(a) is None
