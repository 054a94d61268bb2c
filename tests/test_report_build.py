"""`htl-ray report` on a run directory built from real files (a real checkpoint, real Parquet
tables, a real SQLite MLflow run): every section and image is in the HTML, the planted hard
group is found enriched, and the baseline comparison is paired per image."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from htl_ray import tracking
from htl_ray.checkpoints import save_checkpoint
from htl_ray.cli import main
from htl_ray.config import load_config
from htl_ray.data.schema import read_table
from htl_ray.errors import UserError
from htl_ray.htl.coordinator import version_path
from htl_ray.models import create_model
from htl_ray.report import build_report
from htl_ray.report.render import SECTIONS
from htl_ray.run_dir import PER_SAMPLE_FILE
from htl_ray.run_dir import STATE_FILE as RUN_STATE_FILE
from htl_ray.train.trainer import run_dir_of


def _make_run(dataset, tmp_path, uri, name, versions: int, dice_shift: float = 0.0):
    cfg = load_config(None, [f"data.path={dataset}", f"run.storage_path={tmp_path / 'runs'}",
                             f"run.name={name}", f"tracking.uri={uri}", "htl.method=htl",
                             "model.decoder_channels=[16,8,8,4,4]", "htl.sparsities=[0.3,0.6]"])
    run_dir = run_dir_of(cfg)
    run_id = tracking.start_run(uri, "report", name, {}, {})
    run_dir.mkdir(parents=True)
    (run_dir / RUN_STATE_FILE).write_text(json.dumps(
        {"mlflow_run_id": run_id, "tracking_uri": uri, "config": cfg.to_dict()}))
    torch.manual_seed(0)
    model = create_model(cfg.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch, score in ((0, 0.4), (1, 0.6)):
        ckpt = run_dir / f"checkpoint_{epoch}"
        save_checkpoint(ckpt, model, opt, None, epoch=epoch, metrics={"val/dice": score})
        val = read_table(dataset, split="val")
        rng = np.random.default_rng(epoch)
        val["dice"] = np.clip(0.8 - 0.4 * val["planted_hard"] + dice_shift
                              + 0.05 * rng.standard_normal(len(val)), 0, 1)
        val.drop(columns=["split", "source"]).to_parquet(ckpt / PER_SAMPLE_FILE)
    train = read_table(dataset, split="train")
    for v in range(1, versions + 1):
        rng = np.random.default_rng(v)
        h = 0.6 * train["planted_hard"].to_numpy() + 0.3 * rng.random(len(train))
        sel = np.zeros(len(train), bool)
        sel[np.argsort(-h)[: len(train) // 5]] = True
        path = version_path(run_dir, v)
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": train["id"], "h": h, "selected": sel,
                      "weight": 1.0 + sel}).to_parquet(path)
    return run_dir, run_id


class _Parser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sections, self.images, self.rows = [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"])
        if tag == "img":
            self.images.append((a.get("alt", ""), a["src"]))
        if tag == "tr":
            self.rows += 1


def test_report_has_every_section_and_image_and_finds_the_planted_group(
        synth_dataset, tmp_path, tracking_uri):
    run_dir, run_id = _make_run(synth_dataset, tmp_path, tracking_uri, "htl", versions=2)
    base_dir, _ = _make_run(synth_dataset, tmp_path, tracking_uri, "erm", versions=2,
                            dice_shift=-0.1)
    report = build_report(run_dir, base_dir, top=4)
    parser = _Parser()
    parser.feed(report.html_path.read_text())
    assert parser.sections == list(SECTIONS)
    pngs = [src for _, src in parser.images]
    assert len(pngs) == 1 + 4                       # score histogram + 4 gallery rows
    for src in pngs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert sum("HTL sample" in alt for alt, _ in parser.images) == 4
    # the planted hard site is enriched among HTL samples after Holm correction
    enr = report.enrichment.set_index(["attribute", "group"])
    assert enr.loc[("site", "head/neck"), "p_adjusted"] < 0.05
    assert enr.loc[("site", "head/neck"), "odds_ratio"] > 1
    md = report.markdown_path.read_text()
    assert "enriched among HTL samples (Holm-corrected p < 0.05): " in md and "site=head/neck" in md
    assert "HTL set churn across 2 refreshes" in md
    # side by side with the baseline: paired per image, Δ = 0.1 everywhere
    perf = report.performance
    assert {"baseline dice", "Δ dice"} <= set(perf.columns)
    assert perf["Δ dice"].dropna().round(6).eq(0.1).all()
    assert set(report.worst["model"]) == {"run", "baseline"}
    # logged to the run's MLflow run
    arts = {a.path for a in MlflowClient(tracking_uri).list_artifacts(run_id, "report")}
    assert {"report/report.html", "report/report.md", "report/enrichment.csv"} <= arts


def test_a_run_without_refreshes_is_scored_for_the_report(synth_dataset, tmp_path,
                                                           tracking_uri, capsys):
    run_dir, _ = _make_run(synth_dataset, tmp_path, tracking_uri, "plain", versions=0)
    assert main(["report", str(run_dir), "--top", "2", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "scored for this report with the best checkpoint (epoch 2)" in out
    html = (tmp_path / "out" / "report.html").read_text()
    parser = _Parser()
    parser.feed(html)
    assert parser.sections == list(SECTIONS) and len(parser.images) == 3
    assert "validation Dice" in out


def test_not_a_run_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a run directory"):
        build_report(tmp_path)
