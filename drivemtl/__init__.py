"""drivemtl: multi-task learning on driving scenes with PyTorch Lightning."""

from drivemtl.data import DriveDataModule, SyntheticSplits
from drivemtl.models import MultiTaskNet
from drivemtl.module import MultiTaskModule

__version__ = "0.1.0"
__all__ = ["DriveDataModule", "MultiTaskModule", "MultiTaskNet", "SyntheticSplits", "__version__"]
