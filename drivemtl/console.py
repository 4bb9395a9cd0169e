"""Progress bars and console logging for the command line.

Library code reports through :mod:`logging` (loggers under ``drivemtl``) and wraps its long
loops in :func:`progress`; the commands print their results. Bars are drawn only on a terminal
and never under ``--quiet`` (or ``DRIVEMTL_QUIET=1``), so logs, pipes and CI stay clean.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable

QUIET_ENV = "DRIVEMTL_QUIET"
"""Set to 1 to silence progress bars and informational messages (DDP workers inherit it)."""

PROGRESS_DELAY_S = 0.5
"""A bar appears only once its loop has run this long: short loops print nothing."""

_quiet = False
_bars = True


def set_quiet(quiet: bool, bars: bool = True) -> None:
    """Silence (or restore) progress bars and ``drivemtl`` info messages in this process.

    Args:
        quiet: No bars and no info messages (warnings and errors still show).
        bars: With ``quiet`` false, whether bars are drawn (``--trainer.enable_progress_bar``).
    """
    global _quiet, _bars
    _quiet, _bars = bool(quiet), bool(bars)
    logging.getLogger("drivemtl").setLevel(logging.WARNING if is_quiet() else logging.INFO)


def is_quiet() -> bool:
    """Whether ``--quiet`` was given (:func:`set_quiet`) or ``DRIVEMTL_QUIET`` is set."""
    return _quiet or os.environ.get(QUIET_ENV, "") not in ("", "0")


def progress_enabled() -> bool:
    """Bars are drawn when not quiet, not turned off, and stderr is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return _bars and not is_quiet() and bool(isatty and isatty())


def progress(iterable: Iterable | None = None, **kwargs):
    """``tqdm(iterable, **kwargs)`` on stderr, disabled when :func:`progress_enabled` is false.

    The bar disappears when its loop ends (the command's own summary follows it).
    """
    from tqdm import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("delay", PROGRESS_DELAY_S)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not progress_enabled(), file=sys.stderr, **kwargs)


class _ConsoleHandler(logging.Handler):
    """Writes records through ``tqdm.write``, so a message never cuts a bar in two."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # never let a log message end a run
            self.handleError(record)


def setup_console(quiet: bool = False, bars: bool = True) -> None:
    """Route ``drivemtl`` log records to stderr as plain lines (once), and set quietness
    (see :func:`set_quiet`).

    Like Lightning's own logger, the handler is added only when the application configured
    no root handler; an application that did keeps full control of the records.
    """
    logger = logging.getLogger("drivemtl")
    if not logging.getLogger().hasHandlers() and not any(
        isinstance(h, _ConsoleHandler) for h in logger.handlers
    ):
        handler = _ConsoleHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    set_quiet(quiet, bars)


UNACTIONABLE_WARNINGS = (
    # torch deprecates an API that Lightning itself calls (lightning/pytorch/utilities/_pytree).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Lightning's default seed; its info line "Seed set to 0" follows and says it all.
    "No seed found, seed set to",
)
UNACTIONABLE_INFO = (
    "💡 Tip: For seamless",  # Lightning's advertisements for its cloud services
    "Loading `train_dataloader` to estimate number of stepping batches",
    "`weights_only` was not set",  # Lightning's own save of a full checkpoint (LR finder)
)
_INFO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",  # where Lightning points its rank_zero_info
    "lightning.pytorch.trainer.connectors.checkpoint_connector",
)
"""Lightning's loggers that emit them (a logger's filters see only its own records)."""


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(text.startswith(prefix) for prefix in UNACTIONABLE_INFO)


def hide_unactionable_messages() -> None:
    """Hide warnings and info lines of the libraries that a user of drivemtl cannot act on.

    Warnings a user can act on (a small logging interval, a missing seed, a slow loader) stay.
    """
    import warnings

    for message in UNACTIONABLE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for logger in map(logging.getLogger, _INFO_LOGGERS):
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages())
