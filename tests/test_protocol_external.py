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


def test_an_external_dataset_sharing_images_with_a_settings_train_or_val_split_is_refused(
        synth_dataset, tmp_path):
    """The same images ingested again as 'another site' (the held-out collection still inside
    a setting's data) are refused, naming how many and where; another site's images, or the
    setting's own test split (never trained or chosen on), are not."""
    from sweep_files import write_sweep

    from htl_ray.data.schema import read_manifest
    from htl_ray.data.synth import synthesize
    from htl_ray.tune.space import load_sweep

    sweep = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 1,
                                                          "high": 2}},
                                   {"name": "weak-here"},
                                   overrides=[f"data.path={synth_dataset}"]))
    again = tmp_path / "again" / "site"            # the same seed: the same 200 images
    synthesize(again, n=200, size=48, seed=0, fractions=(0.0, 0.0, 1.0))
    counts = read_manifest(synth_dataset)["split_counts"]
    trained_on = counts["train"] + counts["val"]
    assert 0 < trained_on < 200
    with pytest.raises(ConfigError, match=(
            rf"--external .*site: {trained_on} of its 200 test images are also in the train "
            rf"or val split of {synth_dataset} \(sweep weak-here\).*--drop KEY=PATTERN")):
        check_externals([again], sweeps=[sweep])
    other = tmp_path / "other" / "site"             # another seed: other images
    synthesize(other, n=60, size=48, seed=1, fractions=(0.0, 0.0, 1.0))
    assert check_externals([other], sweeps=[sweep]) == {"site": other.resolve()}
    assert check_externals([synth_dataset], sweeps=[sweep]) == {"ds": synth_dataset.resolve()}
    # a setting whose data is not on this machine is not compared (its run says so itself)
    elsewhere = load_sweep(write_sweep(tmp_path, {"htl.lam": {"type": "float", "low": 1,
                                                              "high": 2}},
                                       {"name": "on-the-cluster"},
                                       overrides=[f"data.path={tmp_path / 'not-here'}"]))
    assert check_externals([again], sweeps=[elsewhere]) == {"site": again.resolve()}
