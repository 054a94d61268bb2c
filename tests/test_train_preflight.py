"""htl_ray.train.preflight: the checks `htl-ray train` makes before Ray starts, called directly
on real synthetic datasets (Parquet records + manifest) — the manifest it returns for a good
one, and for each mistake a ConfigError/UserError naming the key (run.storage_path, data.path,
model.*) and what was expected, in the order the checks run; nothing is created on the way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htl_ray.config import ConfigError, load_config
from htl_ray.errors import UserError
from htl_ray.train.preflight import preflight


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    from htl_ray.data.synth import synthesize

    root = tmp_path_factory.mktemp("preflight")
    synthesize(root / "ok", n=12, size=16, seed=0, fractions=(0.5, 0.25, 0.25))
    synthesize(root / "no_train", n=6, size=16, seed=0, fractions=(0.0, 0.5, 0.5))
    synthesize(root / "no_val", n=6, size=16, seed=0, fractions=(0.5, 0.0, 0.5))
    return root


def _cfg(tmp_path: Path, data: Path | str, *overrides: str):
    return load_config(None, [f"data.path={data}", f"run.storage_path={tmp_path / 'runs'}",
                              "model.decoder_channels=[16,8,8,4,4]", *overrides])


def test_a_good_config_returns_the_datasets_manifest_and_creates_nothing(datasets, tmp_path):
    manifest = preflight(_cfg(tmp_path, datasets / "ok"))
    assert manifest == json.loads((datasets / "ok" / "manifest.json").read_text())
    assert manifest["split_counts"] == {"train": 6, "val": 3, "test": 3}
    assert not (tmp_path / "runs").exists()        # the storage path is probed, not made


@pytest.mark.parametrize("key, value, message", [
    ("run.storage_path", "s3://bucket/runs",
     "run.storage_path: object-store URIs (s3://) are not supported"),
    ("data.path", "gs://bucket/ds", "data.path: object-store URIs (gs://) are not supported"),
])
def test_object_store_uris_are_refused_first(datasets, tmp_path, key, value, message):
    cfg = _cfg(tmp_path, datasets / "ok", f"{key}={value}")
    with pytest.raises(ConfigError) as err:
        preflight(cfg)
    assert str(err.value).startswith(message)


def test_a_storage_path_that_is_a_file_is_named_before_the_dataset_is_looked_at(tmp_path):
    (tmp_path / "runs").write_text("a file")
    cfg = _cfg(tmp_path, tmp_path / "no_such_dataset")
    with pytest.raises(UserError, match=r"^run.storage_path .*runs: exists and is not a folder$"):
        preflight(cfg)


def test_dataset_mistakes_name_data_path(datasets, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "nope", r"^data.path: dataset folder not found: .*nope \(create it with "
                            r"`htl-ray data synth` or `htl-ray data ingest`\)$"),
        (tmp_path / "empty", r"^data.path: .*empty/manifest.json: missing dataset manifest$"),
        (datasets / "no_train", r"^data.path: .*no_train has no training rows \(split counts "
                                r"\{'train': 0, 'val': 3, 'test': 3\}\)$"),
        (datasets / "no_val", r"^data.path: .*no_val has no validation rows \(split counts "
                              r"\{'train': 3, 'val': 0, 'test': 3\}\)$"),
    ]
    for data, message in cases:
        with pytest.raises(UserError, match=message):
            preflight(_cfg(tmp_path, data))


def test_a_records_file_cut_short_is_named_with_the_key(datasets, tmp_path):
    import shutil

    cut = tmp_path / "cut"
    shutil.copytree(datasets / "ok", cut)
    records = cut / "records.parquet"
    records.write_bytes(records.read_bytes()[:300])
    with pytest.raises(UserError, match=f"^data.path: {records} is not a readable Parquet file"):
        preflight(_cfg(tmp_path, cut))


@pytest.mark.parametrize("override, message", [
    ("model.encoder=resnet81", r"model.encoder: 'resnet81' is not a segmentation_models_pytorch "
                               r"encoder \(did you mean resnet18"),
    ("model.decoder_channels=[8,8]", r"model: smp cannot build arch='unet' encoder='resnet18' "
                                     r"in_channels=3 decoder_channels=\[8, 8\]"),
])
def test_a_model_smp_cannot_build_is_refused_after_the_data_checks(datasets, tmp_path,
                                                                    override, message):
    with pytest.raises(ConfigError, match=message):
        preflight(_cfg(tmp_path, datasets / "ok", override))
    # with a missing dataset as well, the dataset is what is named: it is checked first
    with pytest.raises(ConfigError, match="data.path: dataset folder not found"):
        preflight(_cfg(tmp_path, tmp_path / "nope", override))
