"""Supervision settings (docs/method.md §Settings): supervised, semi-supervised (Mean
Teacher), weakly supervised (boxes)."""

from htl_ray.supervision.settings import SETTINGS, Objective

__all__ = ["SETTINGS", "Objective"]
