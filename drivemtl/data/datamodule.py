"""The DataModule: manifests (or the embedded synthetic set) to batches."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from drivemtl.data.batch import collate
from drivemtl.data.datasets import (
    ImageFolderDataset,
    ManifestDataset,
    collate_images,
    find_images,
    seed_worker_transform,
)
from drivemtl.data.io import DEPTH_PNG_SCALE, IMAGE_EXTENSIONS
from drivemtl.data.labels import DEFAULT_CLASSES
from drivemtl.data.manifest import Record, read_manifest, unique_records
from drivemtl.data.transforms import build_transform, decode_size
from drivemtl.errors import DriveMTLError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MIN_IMAGE_SIDE = 32
"""Smallest input side: the backbones reduce the image 32-fold."""


@dataclass
class SyntheticSplits:
    """The embedded synthetic data set used when no manifest is given.

    Attributes:
        train: Number of training images.
        val: Number of validation images.
        test: Number of test images.
        seed: Base seed; each split gets its own stream.
        width: Rendered image width.
        height: Rendered image height.
        dropout: Per-class rate at which a label is hidden as ``?`` in the training split.
        min_object_size: Smallest labelled object, as a fraction of the image height; smaller
            ones are not placed. Objects a few pixels tall carry no visible evidence.
    """

    train: int = 2000
    val: int = 400
    test: int = 400
    seed: int = 0
    width: int = 320
    height: int = 192
    dropout: dict[str, float] = field(default_factory=dict)
    min_object_size: float = 14.0 / 384.0


def default_cache_dir() -> Path:
    """``$DRIVEMTL_CACHE`` or ``~/.cache/drivemtl``."""
    return Path(os.environ.get("DRIVEMTL_CACHE", Path.home() / ".cache" / "drivemtl"))


class DriveDataModule(L.LightningDataModule):
    """Loads manifests for train / val / test and an image folder for predict.

    When no manifest is given, the embedded synthetic driving set is generated once into the
    cache folder and used for all three splits.

    Args:
        train_manifest: CSV or JSONL manifest(s); several are concatenated (their unknown
            classes stay unknown, so sources with different label sets combine safely).
        val_manifest: Validation manifest(s); they choose the checkpoint and the thresholds.
        test_manifest: Test manifest(s).
        predict_dir: Folder of images for ``predict`` (searched recursively).
        classes: The class list, configured here once and linked into the model.
        image_size: Network input (height, width).
        batch_size: Images per batch and per process.
        num_workers: DataLoader worker processes.
        augment: Train-time flip, scale-crop and colour jitter.
        synthetic: The synthetic set's settings (used only without manifests).
        cache_dir: Where the synthetic set is generated; default ``$DRIVEMTL_CACHE`` or
            ``~/.cache/drivemtl``.
        pixel_labels: The per-pixel label maps to decode (depth, segmentation), each with the
            task's reader options (the number of segmentation classes). The CLI sets it from
            ``model.tasks`` (each task's ``pixel_label``), so it is not a command-line option
            there.
        depth_scale: Units per metre in 16-bit depth PNGs (256: the KITTI convention of the
            manifest format); ``.npy`` depth maps are read as metres.
        depth_zoom_correction: Divide training depth by the zoom of the scale-crop
            augmentation, so depth agrees with how near the cropped picture looks (off: the
            values are kept, and a model learns depth about 13-15 % too far with the
            default 60-100 % crops; see the README's Depth section).
        inspect: Before the run, check the manifests of its splits as ``drivemtl inspect``
            does (every image and depth map decoded): ``inspect.json`` and ``labels.png``
            in the run folder, and a stop with every bad file listed before any step.
    """

    def __init__(
        self,
        train_manifest: str | list[str] | None = None,
        val_manifest: str | list[str] | None = None,
        test_manifest: str | list[str] | None = None,
        predict_dir: str | None = None,
        classes: list[str] = list(DEFAULT_CLASSES),
        image_size: tuple[int, int] = (192, 320),
        batch_size: int = 32,
        num_workers: int = 2,
        augment: bool = True,
        synthetic: SyntheticSplits | None = None,
        cache_dir: str | None = None,
        pixel_labels: list[str] | dict[str, dict] = [],
        depth_scale: float = DEPTH_PNG_SCALE,
        depth_zoom_correction: bool = False,
        inspect: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters()
        if len(set(classes)) != len(classes) or not classes:
            raise DriveMTLError(f"data.classes must be a non-empty list of unique names: {classes}")
        if not depth_scale > 0:
            raise DriveMTLError(f"data.depth_scale must be > 0 (units per metre): {depth_scale}")
        if batch_size < 1:
            raise DriveMTLError(f"data.batch_size must be at least 1: {batch_size}")
        if num_workers < 0:
            raise DriveMTLError(f"data.num_workers must be 0 (main process) or more: {num_workers}")
        if len(image_size) != 2 or min(image_size) < MIN_IMAGE_SIDE:
            raise DriveMTLError(
                f"data.image_size is [height, width], each at least {MIN_IMAGE_SIDE} px (the "
                f"backbone divides it by 32): {list(image_size)}"
            )
        self.classes = list(classes)
        self.image_size = tuple(image_size)
        self.manifests = {
            "train": _as_list(train_manifest),
            "val": _as_list(val_manifest),
            "test": _as_list(test_manifest),
        }
        self.use_synthetic = not any(self.manifests.values())
        self.synthetic = synthetic or SyntheticSplits()
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.datasets: dict[str, Dataset] = {}
        self.shuffle_generator: torch.Generator | None = None
        """Draws the training order (and loader seeds): its state travels in checkpoints."""

    # -- synthetic set -------------------------------------------------------------------------

    def synthetic_dir(self) -> Path:
        """Cache folder keyed by every setting that changes the generated files."""
        from drivemtl.data import synthetic

        key = {"settings": asdict(self.synthetic), "classes": self.classes}
        key["version"] = getattr(synthetic, "GENERATOR_VERSION", 1)
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / f"synthetic-{digest}"

    def prepare_data(self) -> None:
        """Generate the synthetic set once and, with ``inspect``, check the manifests (rank 0
        only; other ranks wait in ``setup``)."""
        self._generate_synthetic()
        if self.hparams.inspect:
            self._inspect()

    def _generate_synthetic(self) -> None:
        if not self.use_synthetic or (self.trainer is not None and self.trainer.predicting):
            return  # predict reads an image folder: nothing to generate
        from drivemtl.data.synthetic import SyntheticConfig, generate_dataset

        root = self.synthetic_dir()
        s = self.synthetic
        for offset, split in enumerate(SPLITS):
            target = root / split
            if (target / "manifest.jsonl").is_file():
                continue
            # Write beside and rename, so an interrupted run never leaves half a cache; the
            # folder is this process's own, so two runs generating at once do not collide.
            _remove_abandoned(root, split)
            partial = root / f".{split}.partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            dropout = s.dropout if split == "train" else {}
            config = SyntheticConfig(
                width=s.width, height=s.height, dropout=dropout, min_box_frac=s.min_object_size
            )
            log.info("Generating %d synthetic %s images into %s", getattr(s, split), split, target)
            generate_dataset(
                partial,
                getattr(s, split),
                seed=s.seed * 1000 + offset,
                config=config,
                classes=self.classes,
                progress=True,
                workers=usable_cores(),
            )
            try:
                partial.rename(target)
            except OSError:  # another run finished the same split first: use its copy
                if not (target / "manifest.jsonl").is_file():
                    raise
                shutil.rmtree(partial, ignore_errors=True)

    def _inspect(self) -> None:
        """``data.inspect``: check the manifests of the running stage's splits, rank 0 only."""
        from drivemtl.inspection import (
            InspectSettings,
            format_inspection,
            inspect_manifests,
            task_strides,
            write_inspection,
        )

        stage = self.trainer.state.fn.value if self.trainer is not None else "fit"
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        manifests = [path for split in splits for path in self.manifest_paths(split)]
        if not manifests:
            return
        model = self.trainer.lightning_module if self.trainer is not None else None
        settings = InspectSettings(
            classes=tuple(self.classes),
            image_size=self.image_size,
            strides=task_strides(getattr(model, "tasks", {}).values()),
            depth_scale=self.hparams.depth_scale,
        )
        inspection = inspect_manifests(manifests, settings, workers=usable_cores())
        folder = self.trainer.default_root_dir if self.trainer is not None else "."
        written = write_inspection(inspection, folder)
        log.info("%s\n\nInspection: %s", format_inspection(inspection), written["json"])
        if inspection.problems:
            raise DriveMTLError(
                f"data.inspect: {len(inspection.problems)} problem(s) would stop training "
                f"(all listed in {written['problems']}); first:\n"
                + "\n".join(f"  {p}" for p in inspection.problems[:20])
                + "\nFix or remove these entries and run again."
            )

    def manifest_paths(self, split: str) -> list[Path]:
        """The manifest files of a split (synthetic ones when no manifest is configured)."""
        if self.use_synthetic:
            return [self.synthetic_dir() / split / "manifest.jsonl"]
        return [Path(p) for p in self.manifests[split]]

    # -- datasets ------------------------------------------------------------------------------

    def records(self, split: str) -> list[Record]:
        """Parsed entries of every manifest of a split, each image once (the first entry)."""
        records = []
        for path in self.manifest_paths(split):
            records.extend(read_manifest(path, self.classes))
        return unique_records(records)

    def setup(self, stage: str) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in needed.get(stage, ()):
            if split in self.datasets:
                continue
            if not self.manifest_paths(split):
                option = f"--data.{split}_manifest"
                raise DriveMTLError(
                    f"No {split} data: give {option} (a CSV or JSONL manifest), or give no "
                    "manifest at all to use the embedded synthetic set."
                )
            train = split == "train" and self.hparams.augment
            self.datasets[split] = ManifestDataset(
                self.records(split),
                build_transform(self.image_size, train=train),
                decode_at_least=decode_size(self.image_size, train),
                pixel_labels=self.hparams.pixel_labels,
                depth_scale=self.hparams.depth_scale,
                depth_zoom_correction=self.hparams.depth_zoom_correction,
            )
        if stage == "fit":
            if self.shuffle_generator is None:  # seeded by seed_everything, via torch's seed
                self.shuffle_generator = torch.Generator().manual_seed(torch.initial_seed())
            _warn_overlap(self.datasets["train"].records, self.datasets["val"].records)
        if stage == "predict":
            if not self.hparams.predict_dir:
                raise DriveMTLError("No images to predict: give --data.predict_dir DIR.")
            images = find_images(self.hparams.predict_dir)
            if not images:
                raise DriveMTLError(
                    f"No images in {self.hparams.predict_dir} (searched recursively for "
                    f"{', '.join(IMAGE_EXTENSIONS)} in any letter case)."
                )
            self.datasets["predict"] = ImageFolderDataset(
                images,
                build_transform(self.image_size, train=False),
                len(self.classes),
                decode_at_least=decode_size(self.image_size, train=False),
            )

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        dataset = self.datasets[split]
        workers = self.hparams.num_workers
        return DataLoader(
            dataset,
            batch_size=self.hparams.batch_size,
            shuffle=shuffle,
            # Evaluation loaders draw their worker seed from a generator of their own, so that
            # validating never moves the global random state that training (dropout) uses.
            generator=self.shuffle_generator if shuffle else torch.Generator().manual_seed(0),
            # BatchNorm cannot train on a last batch of one image.
            drop_last=shuffle and len(dataset) > self.hparams.batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
            worker_init_fn=seed_worker_transform if workers > 0 else None,
        )

    # -- resuming ------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The random state of training data: shuffling and augmentation (in checkpoints).

        Restored on resume, a seeded run killed after an epoch continues exactly as if it had
        not stopped (with ``num_workers: 0``; workers draw their augmentation from their own
        seeds, so with workers the resumed epochs are augmented differently, not worse).
        """
        state = {}
        if self.shuffle_generator is not None:
            state["shuffle_generator"] = self.shuffle_generator.get_state()
        transform = getattr(self.datasets.get("train"), "transform", None)
        if hasattr(transform, "random_generator"):  # augmenting (not data.augment: false)
            state["augment_numpy"] = transform.random_generator.bit_generator.state
            state["augment_python"] = transform.py_random.getstate()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (Lightning calls it after ``setup``, on resume)."""
        if "shuffle_generator" in state:
            if self.shuffle_generator is None:
                self.shuffle_generator = torch.Generator()
            self.shuffle_generator.set_state(state["shuffle_generator"])
        transform = getattr(self.datasets.get("train"), "transform", None)
        if hasattr(transform, "random_generator") and "augment_numpy" in state:
            # In place: the pipeline's steps share these generator objects.
            transform.random_generator.bit_generator.state = state["augment_numpy"]
            transform.py_random.setstate(_as_tuples(state["augment_python"]))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        # collate_images keeps each unreadable file's reason for errors.jsonl.
        workers = self.hparams.num_workers
        return DataLoader(
            self.datasets["predict"],
            batch_size=self.hparams.batch_size,
            num_workers=workers,
            collate_fn=collate_images,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=seed_worker_transform if workers > 0 else None,
        )


def _remove_abandoned(root: Path, split: str) -> None:
    """Delete partial folders of ``split`` left by runs that were killed while generating."""
    for partial in root.glob(f".{split}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)  # signal 0: is it still running?
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not a name of ours, or another user's live process


def _warn_overlap(train: list[Record], val: list[Record]) -> None:
    """Warn when validation images are also training images (scores would flatter)."""
    seen = {os.path.normpath(os.path.abspath(r.image)) for r in train}
    shared = [r for r in val if os.path.normpath(os.path.abspath(r.image)) in seen]
    if shared:
        warnings.warn(
            f"{len(shared)} of {len(val)} validation images are also training images (first: "
            f"{shared[0].source}, {shared[0].image}): validation scores, the best checkpoint "
            "and the decision thresholds would flatter the model. Split the data without "
            "overlap.",
            stacklevel=2,
        )


def _as_tuples(value):
    """``random.getstate()`` as it was: a checkpoint may give its tuples back as lists."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def usable_cores() -> int:
    """CPU cores this process may run on (a container's limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)
