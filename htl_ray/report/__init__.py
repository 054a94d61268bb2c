"""The HTL report: who is hard, and how each group is segmented (`htl-ray report`)."""

from htl_ray.report.build import Report, build_report

__all__ = ["Report", "build_report"]
