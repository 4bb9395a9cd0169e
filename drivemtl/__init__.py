"""drivemtl: multi-task learning on driving scenes with PyTorch Lightning.

Public names load lazily, so light commands (``drivemtl convert``) start without importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "DriveDataModule": "drivemtl.data.datamodule",
    "SyntheticSplits": "drivemtl.data.datamodule",
    "MultiTaskModule": "drivemtl.module",
    "MultiTaskNet": "drivemtl.models.net",
    "Predictor": "drivemtl.deploy.predictor",
    "load": "drivemtl.deploy.predictor",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl' has no attribute {name!r}")
