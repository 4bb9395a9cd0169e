"""Data: manifests, datasets, transforms, the DataModule and the synthetic generator.

Public names load lazily: converters use the manifest module without importing torch.
"""

from importlib import import_module

_EXPORTS = {
    "Batch": "drivemtl.data.batch",
    "Sample": "drivemtl.data.batch",
    "collate": "drivemtl.data.batch",
    "DriveDataModule": "drivemtl.data.datamodule",
    "SyntheticSplits": "drivemtl.data.datamodule",
    "DEFAULT_CLASSES": "drivemtl.data.labels",
    "UNKNOWN": "drivemtl.data.labels",
    "ManifestError": "drivemtl.data.manifest",
    "Record": "drivemtl.data.manifest",
    "read_manifest": "drivemtl.data.manifest",
    "write_manifest": "drivemtl.data.manifest",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'drivemtl.data' has no attribute {name!r}")
