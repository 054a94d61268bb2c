"""Who is hard: group definitions and per-group metrics (demographic and implicit groups)."""

from htl_ray.analysis.groups import GROUP_ATTRIBUTES, add_group_columns, group_metrics

__all__ = ["GROUP_ATTRIBUTES", "add_group_columns", "group_metrics"]
