"""Who is hard: groups, per-group metrics with CIs, and HTL enrichment per group."""

from htl_ray.analysis.enrichment import enrichment, htl_set_evolution
from htl_ray.analysis.groups import GROUP_ATTRIBUTES, add_group_columns, group_metrics
from htl_ray.analysis.metric_frame import GroupMetricFrame, metric_frame

__all__ = ["GROUP_ATTRIBUTES", "GroupMetricFrame", "add_group_columns", "enrichment",
           "group_metrics", "htl_set_evolution", "metric_frame"]
