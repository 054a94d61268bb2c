"""Supervision settings (DESIGN §3): supervised, semi-supervised (Mean Teacher), weakly
supervised (boxes)."""

from htl_ray.supervision.settings import SETTINGS, Objective

__all__ = ["SETTINGS", "Objective"]
