"""Pictures of a run (per-class bars, task affinity) into the loggers that take images.

TensorBoard gets ``add_image``, MLflow an artifact through its client's ``log_image``, and any
other logger with a ``log_image`` method (wandb, Neptune, Comet) that method. Loggers that take
no images (CSV) are skipped. The files in the run folder stay the reference.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def figure_array(figure) -> np.ndarray:
    """A matplotlib ``Figure`` rendered to an (H, W, 3) uint8 array."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_array(path: str | Path) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 array."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def log_images(loggers: Iterable, images: dict[str, np.ndarray], step: int = 0) -> list[str]:
    """Send each ``tag: (H, W, 3) uint8`` image to every logger that takes images.

    A logger that fails (a service down) costs a warning, never the run's results.

    Returns:
        The class names of the loggers that received the images.
    """
    received = []
    for logger in loggers:
        try:
            if not _log_to(logger, images, step):
                continue
        except Exception as e:
            log.warning("%s did not take the run's images: %s", type(logger).__name__, e)
            continue
        received.append(type(logger).__name__)
    return received


def _log_to(logger, images: dict[str, np.ndarray], step: int) -> bool:
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        for tag, image in images.items():
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
        logger.experiment.flush()
        return True
    if isinstance(logger, MLFlowLogger):
        for tag, image in images.items():
            logger.experiment.log_image(logger.run_id, image, f"{tag}.png")
        return True
    if callable(getattr(logger, "log_image", None)):
        for tag, image in images.items():
            logger.log_image(key=tag, images=[image], step=step)
        return True
    return False
