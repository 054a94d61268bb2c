"""The protocol's external test-only datasets (`htl_ray.protocol.external`): checked before
anything trains, named by their folders. Scoring the confirmation runs on one runs end to end
in test_protocol_runner.py."""

from __future__ import annotations

import json
import shutil

import pytest

from htl_ray.config import ConfigError
from htl_ray.protocol.external import check_externals


def test_external_datasets_must_hold_a_test_split_and_differ_in_name(synth_dataset, tmp_path):
    assert check_externals([synth_dataset]) == {"ds": synth_dataset.resolve()}
    assert check_externals([]) == {}
    # another site's folder of the same name: the metric names would collide
    twin = tmp_path / "other" / "ds"
    shutil.copytree(synth_dataset, twin)
    with pytest.raises(ConfigError, match=r"--external: two datasets are named 'ds'"):
        check_externals([synth_dataset, twin])
    # ingested without a test split (a training set given by mistake)
    manifest = json.loads((twin / "manifest.json").read_text())
    manifest["split_counts"] = {"train": 170, "val": 30}
    (twin / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match=r"--external: .*ds has no test split .*--all-test"):
        check_externals([twin])
    with pytest.raises(ConfigError, match=r"--external: .*missing dataset manifest"):
        check_externals([tmp_path / "nowhere"])
