"""`htl-ray demo`: the product end to end on embedded defaults (synthetic data, local Ray).

1. synthetic data with two planted hard groups (head/neck lesions under hair, low-contrast
   lesions of patients aged 80 and over) unless it exists;
2. training with HTL attention: 2 Ray Train workers, the refresh scoring the training set
   with pruned copies of the model every 2 epochs;
3. the HTL report of the run — does it find the planted groups among the HTL samples?
4. masks and the quality-control risk for the test split (`htl-ray predict`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from htl_ray.config import load_config
from htl_ray.data.schema import MANIFEST_FILE
from htl_ray.data.synth import synthesize

logger = logging.getLogger(__name__)

DEMO_N, DEMO_SIZE = 400, 64
# (attribute, group) of the report's enrichment table where the synthetic data plants hardness
PLANTED_GROUPS = {("site", "head/neck"): "head/neck lesions under hair",
                  ("age_bin", "75+"): "low-contrast lesions of patients aged 80+"}


@dataclass
class DemoOutcome:
    training: object                     # train.trainer.TrainingOutcome
    report: object                       # report.build.Report
    predictions: object                  # predict.PredictionOutcome
    planted_found: list[str]             # "site=head/neck (OR 3.10)", ...


def demo_config_path() -> Path:
    return Path(str(resources.files("htl_ray") / "configs" / "demo.yaml"))


def planted_found(enrichment, significant: float = 0.05) -> list[str]:
    """The planted hard groups the report finds enriched among HTL samples."""
    rows = enrichment[(enrichment["p_adjusted"] < significant) & (enrichment["odds_ratio"] > 1)]
    return [f"{r.attribute}={r.group} (OR {r.odds_ratio:.2f}, p {r.p_adjusted:.2g})"
            for r in rows.itertuples() if (r.attribute, r.group) in PLANTED_GROUPS]


def run_demo(overrides: list[str] | None = None) -> DemoOutcome:
    from htl_ray.predict import predict
    from htl_ray.report import build_report
    from htl_ray.train.trainer import run_training

    # Each demo run gets its own run directory, so `make demo` can be run again and again.
    stamp = time.strftime("%Y%m%d-%H%M%S")
    cfg = load_config(demo_config_path(), [f"run.name=demo-{stamp}", *(overrides or [])])
    data = Path(cfg.data.path)
    if not (data / MANIFEST_FILE).is_file():
        logger.info(f"[htl-ray] generating synthetic data in {data} ({DEMO_N} images, "
                    f"{DEMO_SIZE}x{DEMO_SIZE}, planted hard groups: "
                    + ", ".join(PLANTED_GROUPS.values()) + ")")
        synthesize(data, n=DEMO_N, size=DEMO_SIZE, seed=cfg.run.seed)
    logger.info("\n[htl-ray] demo 1/3: training with HTL attention")
    training = run_training(cfg)
    logger.info("\n[htl-ray] demo 2/3: the HTL report (who is hard?)")
    report = build_report(training.run_dir)
    logger.info("\n[htl-ray] demo 3/3: predicting the test split with the quality-control risk")
    predictions = predict(training.run_dir, data, training.run_dir / "predictions",
                          split="test")
    return DemoOutcome(training=training, report=report, predictions=predictions,
                       planted_found=planted_found(report.enrichment))
