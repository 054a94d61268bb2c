"""Apply a trained model to new images: `htl-ray predict` (masks, quality-control risk, table).

A thin front over private modules: where the model comes from (`source`), what is read
(`inputs`), the actor that segments and scores (`actor`), and the streaming run (`runner`).
"""

from htl_ray.predict.runner import PredictionOutcome, predict
from htl_ray.predict.source import load_model

__all__ = ["PredictionOutcome", "load_model", "predict"]
