"""Data: manifests, datasets, transforms, the DataModule and the synthetic generator."""

from drivemtl.data.batch import Batch, Sample, collate
from drivemtl.data.datamodule import DriveDataModule, SyntheticSplits
from drivemtl.data.labels import DEFAULT_CLASSES, UNKNOWN
from drivemtl.data.manifest import ManifestError, Record, read_manifest, write_manifest

__all__ = [
    "DEFAULT_CLASSES",
    "UNKNOWN",
    "Batch",
    "DriveDataModule",
    "ManifestError",
    "Record",
    "Sample",
    "SyntheticSplits",
    "collate",
    "read_manifest",
    "write_manifest",
]
