"""A trained model outside the CLI: the Python predictor, export, and exported-file runtimes.

``drivemtl.load(path)`` opens a checkpoint or an exported ``.onnx`` / TorchScript file as a
:class:`~drivemtl.deploy.predictor.Predictor`. Nothing here needs Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "Predictor": "drivemtl.deploy.predictor",
    "load": "drivemtl.deploy.predictor",
    "export_model": "drivemtl.deploy.export",
    "check_export": "drivemtl.deploy.check",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.deploy' has no attribute {name!r}")
