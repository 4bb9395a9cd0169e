"""The one way drivemtl reads a checkpoint or a weights file: a local file, tensors and data only.

Unpickling an arbitrary ``.ckpt`` / ``.pth`` file can run any code it names, so every read
(``fit --ckpt_path`` resume, ``validate`` / ``test`` / ``predict``, ``load_from_checkpoint``,
``model.weights``, ``model.init_from``) goes through :func:`load_checkpoint`: PyTorch's restricted
unpickler (``weights_only=True``), which accepts tensors and plain Python data and refuses
everything else. Remote paths (``http://``, ``s3://``, ...) are refused rather than fetched:
Lightning's remote loader unpickles them with ``weights_only=False``, and a file a user
downloaded first is checked like any other local file. ``file://`` URLs name local files.
"""

from __future__ import annotations

import logging
import pickle
import re
import stat
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import torch

from drivemtl.errors import DriveMTLError

log = logging.getLogger(__name__)

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(path: str | Path, what: str = "Checkpoint") -> Path:
    """The local file a checkpoint argument names; remote URLs are refused.

    Raises:
        DriveMTLError: For a remote URL (``http://``, ``s3://``, ...).
    """
    text = str(path)
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    if _URL.match(text):
        raise DriveMTLError(
            f"{what} {text}: remote paths are not loaded (unpickling a file from elsewhere "
            f"could run code). Download it first (e.g. curl -LO '{text}') and pass the local "
            "file: it is then read like any local file, tensors and plain data only."
        )
    return Path(text)


def check_file(path: Path, what: str = "Checkpoint") -> Path:
    """``path`` if it is a non-empty regular file, else a clear error.

    Raises:
        DriveMTLError: For a missing path, a folder, a pipe or device, or an empty file.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DriveMTLError(f"{what} not found: {path}") from None
    except OSError as e:  # a symlink loop, a permission problem
        raise DriveMTLError(f"Cannot open {what.lower()} {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(info.st_mode):
        raise DriveMTLError(f"{what} {path} is a folder; give a file inside it.")
    if not stat.S_ISREG(info.st_mode):
        raise DriveMTLError(f"{what} {path} is not a regular file (a pipe or a device).")
    if info.st_size == 0:
        raise DriveMTLError(f"{what} {path} is empty (0 bytes): a copy or a save was cut short.")
    return path


@contextmanager
def load_errors(path: Path, what: str = "Checkpoint") -> Iterator[None]:
    """Turn what ``torch.load(..., weights_only=True)`` raises into one message about ``path``."""
    try:
        yield
    except DriveMTLError:
        raise
    except pickle.UnpicklingError as e:
        blocked = re.search(r"GLOBAL (\S+)", str(e))
        if blocked:
            reason = f"it names Python code ({blocked.group(1)}), which loading would run"
        elif zipfile.is_zipfile(path):
            reason = "it holds Python objects besides tensors and plain data"
        else:
            raise DriveMTLError(
                f"{what} {path} is not a file torch.save writes: it is damaged, of another "
                "format, or a pickle holding more than tensors and plain data (not loaded: "
                "unpickling it could run code)."
            ) from None
        raise DriveMTLError(
            f"{what} {path} was refused: {reason}. drivemtl loads tensors and plain data only "
            "(torch.load with weights_only=True). If you trust where the file came from, "
            "re-save its tensors in a Python session: torch.save(torch.load(path, "
            "weights_only=False)['state_dict'], 'weights.pt')."
        ) from None
    except Exception as e:  # torch raises many types for a damaged or foreign file
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise DriveMTLError(
            f"{what} {path} is not a readable PyTorch file ({type(e).__name__}: {first}); it "
            "may be truncated, damaged or of another format."
        ) from None


def load_checkpoint(
    path: str | Path, what: str = "Checkpoint", map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """Load a local PyTorch file with ``weights_only=True``.

    Args:
        path: A local path or ``file://`` URL.
        what: What the file is, for messages (``Checkpoint``, ``model.weights file``).
        map_location: As for :func:`torch.load`.
        mmap: Map the file instead of reading it (only the parts used are read); a legacy
            (non-zip) file, which cannot be mapped, is read whole.

    Raises:
        DriveMTLError: For a remote path, a missing / empty / non-regular file, or a file
            that is damaged or holds more than tensors and plain data.
    """
    path = check_file(local_path(path, what), what)
    with load_errors(path, what), warnings.catch_warnings():
        # The restricted unpickler warns about pickle protocols it was not written for.
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        if mmap:
            try:
                return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
            except RuntimeError:
                pass  # not a zip file: read it whole below
        return torch.load(path, map_location=map_location, weights_only=True)


def drop_unread_stages(
    stored: dict[str, Any], expected: Mapping[str, torch.Tensor], what: str = "the checkpoint"
) -> int:
    """Drop, in place, trunk tensors of backbone stages that the model no longer builds.

    A stage that no head reads (the stride-32 stage under detection alone on its default
    levels) is no longer built; checkpoints written before that carry its weights. They are
    dropped only when they are the whole difference: every other key matches.

    Returns:
        How many tensors were dropped.
    """
    unexpected = [k for k in stored if k not in expected]
    if not unexpected or any(k not in stored for k in expected):
        return 0
    if not all(k.startswith(("trunk.", "net.trunk.")) for k in unexpected):
        return 0
    for key in unexpected:
        del stored[key]
    log.info(
        "%s: left out %d tensors of backbone stages that no head reads (e.g. %s)",
        what,
        len(unexpected),
        unexpected[0],
    )
    return len(unexpected)


def check_state_fits(
    stored: Mapping[str, Any], expected: Mapping[str, torch.Tensor], what: str = "the checkpoint"
) -> None:
    """Refuse weights that do not fit the model, with counts and examples.

    Raises:
        DriveMTLError: When keys are missing or unexpected, or tensors differ in shape (a
            checkpoint whose class list or task options were edited, or of another model).
    """
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    shapes = [
        f"{k}: {tuple(stored[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in stored and isinstance(stored[k], torch.Tensor) and stored[k].shape != v.shape
    ]
    if not (missing or unexpected or shapes):
        return
    parts = [
        f"{len(items)} {label} (e.g. {items[0]})"
        for label, items in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("tensors of another shape", shapes),
        )
        if items
    ]
    raise DriveMTLError(
        f"The weights of {what} do not fit the model its hyperparameters describe: "
        f"{'; '.join(parts)}. Was its class list or a task option edited, or is it from "
        "another version of drivemtl?"
    )
