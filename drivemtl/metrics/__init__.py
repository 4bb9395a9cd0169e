"""Per-task metrics, shared by training (validate/test) and offline evaluation."""

from drivemtl.metrics.presence import PresenceMetric, presence_report

__all__ = ["PresenceMetric", "presence_report"]
