"""``drivemtl inspect``: what manifests hold, and every file that would stop training.

Names load lazily, so ``drivemtl inspect --help`` answers without importing torch.
"""

from importlib import import_module

from drivemtl.inspection.cli import main

_EXPORTS = {
    "Inspection": "drivemtl.inspection.report",
    "format_inspection": "drivemtl.inspection.report",
    "inspect_manifests": "drivemtl.inspection.report",
    "load_settings": "drivemtl.inspection.report",
    "task_strides": "drivemtl.inspection.report",
    "write_inspection": "drivemtl.inspection.report",
    "InspectSettings": "drivemtl.inspection.stats",
    "Summary": "drivemtl.inspection.stats",
    "summarise": "drivemtl.inspection.stats",
    "check_records": "drivemtl.inspection.scan",
}
__all__ = [*_EXPORTS, "main"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.inspection' has no attribute {name!r}")
