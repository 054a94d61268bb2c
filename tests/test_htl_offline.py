"""`htl-ray score`: offline HTL scores of a saved checkpoint, and h as a failure detector."""

import dataclasses
import math

import pandas as pd
import pytest
import torch

from htl_ray.checkpoints import save_checkpoint
from htl_ray.cli import main
from htl_ray.config import ModelConfig
from htl_ray.errors import UserError
from htl_ray.htl.offline import failure_summary, score_checkpoint
from htl_ray.models import create_model

CFG = ModelConfig(decoder_channels=[32, 16, 8, 8, 4])


def test_failure_summary_hand_computed():
    table = pd.DataFrame({"h": [0.9, 0.1, 0.8, 0.2], "dense_iou": [0.3, 0.9, 0.5, 0.7],
                          "tta": [0.1, 0.9, 0.2, 0.8], "entropy": [0.5, 0.5, 0.5, 0.5],
                          "uncertain": [0.9, 0.1, 0.1, 0.9]})
    s = failure_summary(table)
    assert s["failure_rate"] == 0.5 and s["failure_auroc"] == 1.0
    # every quality-control risk on the same images: reversed, uninformative, one of two right
    assert s["risk_auroc"]["h"] == 1.0 and s["risk_auroc"]["tta"] == 0.0
    assert s["risk_auroc"]["entropy"] == 0.5 and s["risk_auroc"]["uncertain"] == 0.5
    assert s["risk_auroc"]["tta+h"] == 0.5


def test_score_command_writes_the_table(ray_cluster, synth_dataset, tmp_path, capsys):
    torch.manual_seed(0)
    model = create_model(CFG)
    model.segmentation_head[0].bias.data.fill_(0.0)
    opt = torch.optim.AdamW(model.parameters())
    ckpt = tmp_path / "checkpoint_x"
    save_checkpoint(ckpt, model, opt, None, epoch=3, metrics={}, extra={"model_config":
                                                           dataclasses.asdict(CFG)})
    table, summary, dest = score_checkpoint(ckpt, synth_dataset, split="val",
                                            sparsities=(0.5,), out=tmp_path / "s.parquet")
    assert len(table) == 30 and dest.is_file() and summary["epoch"] == 3
    # an untrained model fails everywhere: the AUROC is undefined (NaN), and says so
    assert summary["failure_rate"] == 1.0 and math.isnan(summary["failure_auroc"])
    code = main(["score", str(ckpt / "checkpoint.pt"), str(synth_dataset), "--split", "test",
                 "--sparsities", "0.3,0.6", "--out", str(tmp_path / "t.parquet")])
    out = capsys.readouterr().out
    assert code == 0 and "AUROC undefined: every image fails" in out
    assert "target 0.30 → 0.3000" in out
    assert set(pd.read_parquet(tmp_path / "t.parquet").columns) >= {
        "id", "d_0.30", "d_0.60", "h", "tta", "entropy", "uncertain"}
    with pytest.raises(UserError, match="not a checkpoint"):
        score_checkpoint(tmp_path, synth_dataset)


def test_architecture_falls_back_to_the_runs_config(tmp_path):
    import json

    from htl_ray.checkpoints import model_config_of

    ckpt = tmp_path / "run" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    (tmp_path / "run" / "htl_run.json").write_text(json.dumps(
        {"config": {"model": {"arch": "fpn", "encoder": "resnet18"}}}))
    assert model_config_of(ckpt, {})["arch"] == "fpn"
    assert model_config_of(ckpt, {"model_config": {"arch": "unet"}})["arch"] == "unet"
    with pytest.raises(ValueError, match="cannot tell which architecture"):
        model_config_of(tmp_path, {})
