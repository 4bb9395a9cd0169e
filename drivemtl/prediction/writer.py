"""Streams predictions to disk batch by batch: constant memory, resumable, kill-safe."""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from drivemtl.data.pixel_labels import pixel_labels
from drivemtl.errors import DriveMTLError
from drivemtl.jsonl import load_file
from drivemtl.prediction.files import (
    CSV_FILE,
    ERRORS,
    OVERLAYS,
    PREDICTIONS,
    PREVIEW_SUFFIX,
    RUN_INFO,
    LineAppender,
    RelativeNamer,
    done_images,
    jsonl_to_csv,
    map_folders,
    overlay_name,
    write_json,
    write_picture,
)
from drivemtl.prediction.overlay import write_overlay
from drivemtl.prediction.thresholds import ThresholdSpec, apply_thresholds, parse_thresholds

# What a resumed run must share with the run it continues, or its lines would mix.
_RESUME_KEYS = ("checkpoint", "predict_dir", "classes", "thresholds", "image_size")


@dataclass
class PredictStats:
    """Counts of one ``predict`` run.

    Attributes:
        found: Images found in the folder.
        skipped: Already in ``predictions.jsonl`` from an earlier run (``--resume``).
        predicted: Written to ``predictions.jsonl`` by this run.
        failed: Written to ``errors.jsonl`` by this run.
        overlay_failed: Predicted, but the overlay could not be written.
        maps: Label maps (PNG) written by this run, per map task (``run.json`` lists them as
            ``<pixel_label>_maps``).
        preview_failed: A map written, but its colour preview could not be.
        seconds: Wall time from the first batch requested to the last written.
    """

    found: int = 0
    skipped: int = 0
    predicted: int = 0
    failed: int = 0
    overlay_failed: int = 0
    maps: dict[str, int] = field(default_factory=dict)
    preview_failed: int = 0
    seconds: float = 0.0

    def as_json(self) -> dict:
        """The ``stats`` of ``run.json``."""
        out = asdict(self)
        maps = out.pop("maps")
        ordered = {}
        for key, value in out.items():
            if key == "preview_failed":
                ordered.update({f"{name}_maps": n for name, n in maps.items()})
            ordered[key] = value
        return ordered

    @property
    def images_per_second(self) -> float:
        done = self.predicted + self.failed
        return done / self.seconds if self.seconds > 0 else 0.0


class PredictionWriter(BasePredictionWriter):
    """Writes ``predictions.jsonl`` / ``errors.jsonl`` (+ overlays, depth PNGs, CSV) per batch.

    Each batch's lines go out in one unbuffered append, so memory stays flat whatever the
    folder size and a killed run loses nothing it finished. Images whose file could not be
    decoded arrive marked by the dataset (``batch.errors``) and go to ``errors.jsonl``.

    Single process only: under DDP each rank would need its own part file and a merge, which
    buys little here (decoding, not the model, bounds folder inference); use one device and
    more ``data.num_workers``.

    Args:
        output_dir: Folder of the output files.
        predict_dir: The image folder; ``image`` paths are written relative to it.
        checkpoint: The checkpoint path, recorded in ``run.json``.
        thresholds: Per-class overrides of the checkpoint's decision thresholds.
        box_score_threshold: Override of the detection task's operating point (``run.json``,
            overlays); ``None`` keeps the checkpoint's.
        overlays: Also write ``overlays/<image>.jpg`` pictures.
        overlay_max_side: Longer side of overlay pictures, in pixels.
        depth_preview: With a map head (depth, segmentation), also write
            ``<map>_preview/<image>.jpg`` (the map in colour; same size limit as overlays).
        csv: Also write ``predictions.csv`` at the end (from the JSONL, so they agree).
        resume: Skip images already in ``predictions.jsonl``; retry those in ``errors.jsonl``.
        overwrite: Delete the outputs of an earlier run in ``output_dir`` first.
    """

    def __init__(
        self,
        output_dir: str | Path,
        predict_dir: str | Path,
        checkpoint: str | Path | None = None,
        thresholds: ThresholdSpec = None,
        box_score_threshold: float | None = None,
        overlays: bool = False,
        overlay_max_side: int = 1280,
        depth_preview: bool = True,
        csv: bool = False,
        resume: bool = False,
        overwrite: bool = False,
    ):
        super().__init__(write_interval="batch")
        if resume and overwrite:
            raise DriveMTLError("--resume and --overwrite contradict each other: choose one.")
        self.output_dir = Path(output_dir)
        self.predict_dir = Path(predict_dir)
        self._relative = RelativeNamer(predict_dir)
        self.checkpoint = str(Path(checkpoint).resolve()) if checkpoint else None
        self.overrides = parse_thresholds(thresholds)
        self.box_score_threshold = box_score_threshold
        self.overlays = overlays
        self.overlay_max_side = overlay_max_side
        self.depth_preview = depth_preview
        self.csv = csv
        self.resume = resume
        self.overwrite = overwrite
        self.stats = PredictStats()
        self.info: dict[str, Any] = {}
        self._classes: list[str] = []
        self._predictions: LineAppender | None = None
        self._errors: LineAppender | None = None
        self._shared_stems: set[str] = set()
        self._tasks: list = []
        self._map_tasks: dict = {}
        self._started = 0.0
        self._completed = False

    # -- paths ---------------------------------------------------------------------------------

    @property
    def predictions_path(self) -> Path:
        return self.output_dir / PREDICTIONS

    @property
    def errors_path(self) -> Path:
        return self.output_dir / ERRORS

    # -- hooks ---------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if trainer.world_size > 1:
            raise DriveMTLError(
                "predict runs in one process (it writes one predictions.jsonl): use "
                "--trainer.devices=1 and raise --data.num_workers for speed."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_existing()
        done = done_images(self.predictions_path) if self.resume else set()

        dataset = trainer.datamodule.datasets["predict"]
        self.stats.found = len(dataset.images)
        self._tasks = list(getattr(pl_module, "tasks", {}).values())
        self._map_tasks = {task.pixel_label: task for task in self._tasks if task.pixel_label}
        self.stats.maps = dict.fromkeys(self._map_tasks, 0)
        if self._map_tasks:
            self._shared_stems = _shared_stems(self._relative(p) for p in dataset.images)
        own = self._own_outputs_inside_input()
        keep = []
        for path in dataset.images:
            if own and os.path.abspath(path).startswith(own):
                self.stats.found -= 1  # our own overlays are not input images
                continue
            if done and self._relative(path) in done:
                continue
            keep.append(path)
        self.stats.skipped = self.stats.found - len(keep)
        dataset.images = keep
        self._predictions = LineAppender(self.predictions_path)
        self._errors = LineAppender(self.errors_path)
        self._completed = not keep  # nothing to do: Lightning skips the predict loop

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the checkpoint's weights and thresholds are restored, before any decoding.
        self._classes = list(pl_module.classes)
        in_effect = apply_thresholds(
            pl_module.tasks, pl_module.net.heads, self._classes, self.overrides
        )
        datamodule = trainer.datamodule
        self.info = {
            "checkpoint": self.checkpoint,
            "predict_dir": str(self.predict_dir.resolve()),
            "classes": self._classes,
            "thresholds": in_effect,
            "image_size": list(datamodule.image_size),
            "tasks": list(pl_module.tasks),
        }
        # Options of one task (detection's operating point): refused without that task.
        options = {"box_score_threshold": self.box_score_threshold}
        for key, value in options.items():
            if value is not None and not any(
                key in t.prediction_options for t in pl_module.tasks.values()
            ):
                from drivemtl.tasks import kinds_of

                kind = kinds_of(lambda task, key=key: key in task.prediction_options)
                raise DriveMTLError(f"--{key} needs a model with a {kind} head.")
        for task in pl_module.tasks.values():
            self.info.update(task.run_info(options))
        self._check_resume_matches()
        if self.resume:
            # Failed images are retried now, so their old lines would become duplicates.
            os.truncate(self.errors_path, 0)
        self._write_info("running")
        self._started = time.perf_counter()

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: list[dict],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        errors = getattr(batch, "errors", None) or [None] * len(prediction)
        good, bad = [], []
        for row, error in zip(prediction, errors):
            source = row["image"]
            image = self._relative(source)
            if error:
                bad.append({"image": image, "error": error})
                continue
            out = {"image": image, **{k: v for k, v in row.items() if k != "image"}}
            layers = []
            for key, task in self._map_tasks.items():
                value = out.get(key)
                if value is not None and not isinstance(value, str):
                    value = np.asarray(
                        value.detach().cpu() if isinstance(value, torch.Tensor) else value
                    )
                    out[key] = self._save_map(task, value, image)
                    layers.append(functools.partial(task.draw_overlay, value=value))
            # Pictures before the line: a kill in between leaves a picture that a resumed
            # run rewrites, never a line without its picture.
            if self.overlays:
                self._save_overlay(source, out, image, layers)
            good.append(out)
        self.stats.predicted += self._predictions.write(good)
        self.stats.failed += self._errors.write(bad)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stats.seconds = time.perf_counter() - self._started
        self._completed = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        for appender in (self._predictions, self._errors):
            if appender is not None:
                appender.close()
        if not self._completed:
            return  # interrupted: the files hold every finished batch; --resume continues
        if self.csv and self.predictions_path.is_file():
            classes = self._classes or list(pl_module.classes)
            jsonl_to_csv(self.predictions_path, self.output_dir / CSV_FILE, self._tasks, classes)
        if self.info:
            self._write_info("complete")

    # -- summary -------------------------------------------------------------------------------

    @property
    def completed(self) -> bool:
        return self._completed

    def total_predicted(self) -> int:
        """Images with a prediction in the file: earlier runs (resume) plus this one."""
        return self.stats.skipped + self.stats.predicted

    def summary(self) -> str:
        """The closing lines printed by ``drivemtl predict``."""
        s = self.stats
        lines = [
            f"Images: {s.predicted} predicted, {s.failed} failed, {s.skipped} skipped "
            f"(already predicted) of {s.found} found; {s.images_per_second:.1f} images/s "
            f"over {s.seconds:.1f} s",
            f"Predictions: {self.predictions_path}",
        ]
        if s.failed:
            lines.append(f"Errors:      {self.errors_path} ({s.failed} unreadable image(s))")
        if self.csv:
            lines.append(f"CSV:         {self.output_dir / CSV_FILE}")
        if self.overlays:
            extra = f" ({s.overlay_failed} could not be drawn)" if s.overlay_failed else ""
            lines.append(f"Overlays:    {self.output_dir / OVERLAYS}{extra}")
        for key, count in s.maps.items():
            if not count:
                continue
            title = f"{key.capitalize()}:"
            lines.append(
                f"{title:<12} {self.output_dir / key} ({count} {self._map_tasks[key].map_format})"
            )
            if self.depth_preview:
                extra = f" ({s.preview_failed} could not be drawn)" if s.preview_failed else ""
                lines.append(f"Previews:    {self.output_dir / (key + PREVIEW_SUFFIX)}{extra}")
        return "\n".join(lines)

    # -- helpers -------------------------------------------------------------------------------

    def _prepare_existing(self) -> None:
        outputs = [self.predictions_path, self.errors_path, self.output_dir / CSV_FILE]
        folders = [self.output_dir / d for d in (OVERLAYS, *map_folders(pixel_labels()))]
        # Picture folders are a predict run's only beside its run record: a data set's own
        # depth/ or segmentation/ (ground truth) must be neither overwritten nor deleted.
        if not (self.output_dir / RUN_INFO).is_file():
            foreign = [f for f in folders if f.is_dir() and any(f.iterdir())]
            if foreign:
                raise DriveMTLError(
                    f"{foreign[0]} holds files that no predict run wrote (no {RUN_INFO} in "
                    f"{self.output_dir}); predict writes its maps and pictures there and would "
                    "overwrite them. Choose another --output_dir (an empty or new folder)."
                )
        if self.overwrite:
            for path in [*outputs, self.output_dir / RUN_INFO]:
                path.unlink(missing_ok=True)
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            return
        if self.resume:
            return
        used = [p for p in outputs[:2] if p.is_file() and p.stat().st_size > 0]
        if used:
            raise DriveMTLError(
                f"{used[0]} already exists: pass --resume to continue that run, or --overwrite "
                "to start again (or choose another --output_dir)."
            )

    def _own_outputs_inside_input(self) -> tuple[str, ...]:
        """Path prefixes of this run's outputs that lie inside the image folder.

        The whole output folder when it is inside the image folder; its picture folders
        (overlays, depth maps, previews) when it is the image folder itself. Images there are
        this tool's outputs, never inputs (a resumed run would predict its own overlays).
        """
        out, root = os.path.realpath(self.output_dir), os.path.realpath(self.predict_dir)
        if out != root and not out.startswith(root + os.sep):
            return ()
        # Prefixes in the image paths' own form (the folder as given, made absolute).
        inside = os.path.normpath(
            os.path.join(os.path.abspath(self.predict_dir), os.path.relpath(out, root))
        )
        if out != root:
            return (os.path.join(inside, ""),)
        return tuple(os.path.join(inside, d, "") for d in (OVERLAYS, *map_folders(pixel_labels())))

    def _check_resume_matches(self) -> None:
        info_path = self.output_dir / RUN_INFO
        if not (self.resume and info_path.is_file() and self.predictions_path.is_file()):
            return
        try:
            previous = load_file(info_path, "run record")
        except DriveMTLError:
            return  # an unreadable record cannot veto; the lines themselves are intact
        if not isinstance(previous, dict):
            return
        for key in _RESUME_KEYS:
            if key in previous and previous[key] != self.info[key]:
                raise DriveMTLError(
                    f"--resume: {key} differs from the run being continued in {self.output_dir} "
                    f"({previous[key]!r} then, {self.info[key]!r} now); the predictions would "
                    "mix. Use another --output_dir, or --overwrite."
                )

    def _write_info(self, status: str) -> None:
        write_json(
            self.output_dir / RUN_INFO,
            {**self.info, "status": status, "stats": self.stats.as_json()},
        )

    def _save_map(self, task: Any, value: np.ndarray, image: str) -> str:
        """Write a task's predicted label map (and its preview); returns its relative path."""
        key = task.pixel_label
        stem = os.path.splitext(image)[0]
        # The contract's name drops the extension (depth/sub/x.png). Images that share a stem
        # (a.jpg and a.png) would overwrite each other's map: those keep their full name.
        rel = f"{key}/{image if stem in self._shared_stems else stem}.png"
        target = os.path.join(self.output_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        task.save_map(value, target)
        self.stats.maps[key] += 1
        if self.depth_preview:
            preview = os.path.join(self.output_dir, key + PREVIEW_SUFFIX, overlay_name(image))
            try:
                write_picture(task.preview(value), preview, self.overlay_max_side)
            except Exception:  # a picture is a convenience: never lose the prediction over it
                self.stats.preview_failed += 1
        return rel

    def _save_overlay(self, source: str, row: dict, image: str, layers: list) -> None:
        target = os.path.join(self.output_dir, OVERLAYS, overlay_name(image))
        try:
            write_overlay(
                source,
                row,
                self._classes,
                target,
                self.overlay_max_side,
                min_box_score=self.info.get("box_score_threshold", 0.0),
                layers=layers,
                caption="\n".join(c for t in self._tasks if (c := t.caption(row))),
            )
        except Exception:  # a picture is a convenience: never lose the prediction over it
            self.stats.overlay_failed += 1


def _shared_stems(images: Iterable[str]) -> set[str]:
    """Relative image paths without extension that more than one image has (a.jpg, a.png)."""
    counts = Counter(os.path.splitext(image)[0] for image in images)
    return {stem for stem, n in counts.items() if n > 1}
