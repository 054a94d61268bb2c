"""htl_ray.data.selection: which images `--keep` / `--drop` let through, and the mistakes it
refuses."""

import math
import re

import pytest

from htl_ray.data.selection import Selection, metadata_text, parse_selection, select
from htl_ray.errors import UserError

IDS = ["a", "b", "c", "d", "e"]
META = {"a": {"lesion_id": "MSK4_1", "age": 45.0, "site": "head/neck"},
        "b": {"lesion_id": "MSK4_2", "age": 80.0, "site": "back"},
        "c": {"lesion_id": "HAM_1", "age": math.nan, "site": "back"},
        "d": {"lesion_id": None, "age": 85.0, "site": None}}         # e: no metadata row


def test_keep_and_drop_select_by_shell_pattern_and_an_unknown_value_matches_nothing():
    drop = parse_selection("lesion_id=MSK4_*", keep=False)
    kept, notes = select(IDS, META, [drop])
    assert kept == {"c", "d", "e"}           # unknown lesion ids are not dropped
    assert notes == ["--drop lesion_id=MSK4_*: 2 of 5 images left out (not ingested)"]
    kept, _ = select(IDS, META, [parse_selection("lesion_id=MSK4_*", keep=True)])
    assert kept == {"a", "b"}                # nor kept
    # every --keep must match, then no --drop: ages are read in whole years (80.0 → "80")
    kept, notes = select(IDS, META, [parse_selection("age=8?", keep=True),
                                     parse_selection("site=back", keep=False)])
    assert kept == {"d"} and notes[0].startswith("--keep age=8?: 3 of 5")
    assert notes[1] == "--drop site=back: 1 of 5 images left out (not ingested)"
    assert select(IDS, META, [parse_selection("id=[ae]", keep=True)])[0] == {"a", "e"}
    assert select(IDS, META, []) == (set(IDS), [])


def test_patterns_are_case_sensitive_and_values_read_as_written():
    assert not Selection("lesion_id", "msk4_*", keep=True).matches("MSK4_1")
    assert metadata_text(45.0) == "45" and metadata_text(45.5) == "45.5"
    assert metadata_text(None) is None and metadata_text(math.nan) is None


@pytest.mark.parametrize("text, message", [
    ("lesion_id", "expected KEY=PATTERN"),
    ("lesion_id=", "expected KEY=PATTERN"),
    ("lesionid=MSK4_*", "unknown key 'lesionid' (did you mean lesion_id?); expected one of "
                        "id, age, sex, site, lesion_id, diagnosis"),
])
def test_a_malformed_selection_names_the_option_and_what_it_expects(text, message):
    with pytest.raises(UserError, match=re.escape(f"--drop {text!r}: {message}")):
        parse_selection(text, keep=False)


def test_a_selection_that_matches_no_image_is_refused_with_the_values_seen():
    with pytest.raises(UserError, match=r"--drop lesion_id=MSK_4\*: no image's lesion_id "
                                        r"matches 'MSK_4\*' \(values seen: HAM_1, MSK4_1, "
                                        r"MSK4_2\)"):
        select(IDS, META, [parse_selection("lesion_id=MSK_4*", keep=False)])
    with pytest.raises(UserError, match="no image has one"):
        select(IDS, {}, [parse_selection("sex=male", keep=True)])
    with pytest.raises(UserError, match="together they leave no image to ingest"):
        select(IDS, META, [parse_selection("age=45", keep=True),
                           parse_selection("site=head*", keep=False)])
