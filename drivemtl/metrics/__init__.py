"""Per-task metrics, shared by training (validate/test) and offline evaluation."""

from drivemtl.metrics.depth import DepthMetric, depth_report, image_errors
from drivemtl.metrics.detection import DetectionMetric, ImageBoxes, detection_report
from drivemtl.metrics.presence import PresenceMetric, presence_report

__all__ = [
    "DepthMetric",
    "DetectionMetric",
    "ImageBoxes",
    "PresenceMetric",
    "depth_report",
    "detection_report",
    "image_errors",
    "presence_report",
]
