"""Per-task metrics, shared by training (validate/test) and offline evaluation."""

from drivemtl.metrics.depth import DepthMetric, depth_report, image_errors
from drivemtl.metrics.presence import PresenceMetric, presence_report

__all__ = [
    "DepthMetric",
    "PresenceMetric",
    "depth_report",
    "image_errors",
    "presence_report",
]
