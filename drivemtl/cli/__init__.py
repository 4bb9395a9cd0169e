"""Command line: LightningCLI for fit / validate / test / predict, plus convert, inspect,
evaluate and compare.

``main(args=None)`` is what the ``drivemtl`` script and ``python -m drivemtl`` call; tests call it
directly with a list of arguments.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from drivemtl.errors import DriveMTLError

RUN_DIR_ENV = "DRIVEMTL_RUN_DIR"
"""Carries the run folder to DDP worker processes, which re-run the command line."""


def user_message(error: DriveMTLError) -> str:
    """The error's own message, without the worker traceback that a DataLoader worker adds.

    PyTorch re-raises a worker's exception in the main process with the worker's formatted
    traceback as its message; the user needs only the last part, what went wrong.
    """
    text = str(error)
    _, marker, trace = text.partition("Original Traceback (most recent call last):\n")
    if not marker:
        return text
    # The traceback's frames are indented; the exception line ("pkg.Error: message") is not.
    found = re.search(r"^[A-Za-z_][\w.]*: ", trace, flags=re.MULTILINE)
    return trace[found.end() :].rstrip() if found else text


@dataclass(frozen=True)
class Subcommand:
    """One ``drivemtl`` subcommand.

    Attributes:
        name: What the user types.
        summary: Its line in ``drivemtl --help``.
        entry: ``"module:function"`` taking the arguments after the name and returning the
            exit status, imported only when the subcommand runs (so light commands never load
            torch); ``None``: a LightningCLI subcommand.
    """

    name: str
    summary: str
    entry: str | None = None


SUBCOMMANDS = (
    Subcommand("fit", "train a model from a config (LightningCLI: --config configs/demo.yaml)"),
    Subcommand("validate", "metrics of a checkpoint on the validation data (--ckpt_path)"),
    Subcommand("test", "metrics of a checkpoint on the test data (--ckpt_path)"),
    Subcommand("predict", "predictions.jsonl (+ overlays, depth and mask PNGs) for a folder"),
    Subcommand(
        "export",
        "a checkpoint to ONNX or TorchScript, with --check against the checkpoint",
        "drivemtl.deploy.cli:main",
    ),
    Subcommand(
        "convert",
        "COCO, YOLO, VOC, BDD100K, KITTI or Cityscapes annotations -> manifest",
        "drivemtl.converters:main",
    ),
    Subcommand(
        "inspect",
        "check manifests before training: every file decoded, labels, box sizes, depth",
        "drivemtl.inspection:main",
    ),
    Subcommand(
        "evaluate",
        "score a predictions.jsonl against a manifest, per class",
        "drivemtl.evaluation:main",
    ),
    Subcommand(
        "compare",
        "multi-task gain over single-task runs (Delta_m) from their metrics.json",
        "drivemtl.mtl.compare:main",
    ),
)
_BY_NAME = {command.name: command for command in SUBCOMMANDS}

USAGE = (
    f"usage: drivemtl {{{','.join(_BY_NAME)}}} ...\n\n"
    "Multi-task learning on driving scenes (presence, detection, depth, segmentation)\n"
    "with PyTorch Lightning.\n\n"
    "subcommands (drivemtl <subcommand> --help for its options):\n"
    + "".join(f"  {c.name:<10} {c.summary}\n" for c in SUBCOMMANDS)
)


def config_paths(argv: list[str]) -> list[str]:
    """The values of every ``--config`` option in a command line."""
    found = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            found.append(argv[i + 1])
        elif arg.startswith("--config="):
            found.append(arg.split("=", 1)[1])
    return found


def check_config_files(argv: list[str]) -> None:
    """Refuse a ``--config`` that is not a readable YAML mapping, naming file and line.

    jsonargparse would report some of these without the file's name ("Unexpected config"),
    others with a traceback (a binary file).

    Raises:
        DriveMTLError: For a missing, unreadable, non-UTF-8 or malformed config file, or one
            whose top level is not a mapping of options.
    """
    import yaml

    for value in config_paths(argv):
        path = Path(value)
        if not path.exists():
            if value.endswith((".yaml", ".yml", ".json")) or os.sep in value:
                raise DriveMTLError(f"Config file not found: {value}")
            continue  # jsonargparse also takes the YAML text itself
        if path.is_dir():
            raise DriveMTLError(f"--config {value} is a folder; give a YAML file.")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DriveMTLError(
                f"Config file {value} is not UTF-8 text (byte {e.start}: {e.reason})."
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise DriveMTLError(
                f"Config file {value}{where}: not valid YAML ({problem})."
            ) from None
        if data is not None and not isinstance(data, dict):
            raise DriveMTLError(
                f"Config file {value} holds a {type(data).__name__}, not a mapping of options "
                "(e.g. 'model: {backbone: resnet18}'; see configs/demo.yaml)."
            )


DEBUG_ENV = "DRIVEMTL_DEBUG"
"""Set to 1 (or pass ``--debug``) to see the traceback behind an error message."""


def main(args: list[str] | None = None) -> int:
    """Entry point of ``drivemtl``; returns the exit status.

    Errors a user can cause end in one ``drivemtl: error:`` message and exit status 2; an
    unexpected one (a bug) in a message with exit status 1. ``--debug`` or ``DRIVEMTL_DEBUG=1``
    lets the exception through with its traceback.
    """
    argv = list(sys.argv[1:] if args is None else args)
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    previous = os.environ.get(DEBUG_ENV)
    if debug:
        os.environ[DEBUG_ENV] = "1"  # DDP workers re-run the command line without the flag
    if args is None:
        sys.argv[1:] = argv  # LightningCLI reads sys.argv itself
    try:
        return _dispatch(argv, None if args is None else argv)
    except Exception as e:
        if debug:
            raise
        # Ours; a bad trainer setting (Lightning's); an option whose package is not installed.
        if isinstance(e, (DriveMTLError, ImportError)) or _is_misconfiguration(e):
            print(f"drivemtl: error: {user_message(e)}", file=sys.stderr)
            return 2
        if isinstance(e, OSError):  # a file the user named: missing, unreadable, disk full
            where = f"{e.filename}: " if e.filename else ""
            print(f"drivemtl: error: {where}{e.strerror or user_message(e)}", file=sys.stderr)
            return 2
        print(
            f"drivemtl: error: unexpected {type(e).__name__}: {user_message(e)}\n"
            f"This is probably a bug in drivemtl: run again with --debug (or {DEBUG_ENV}=1) "
            "for the traceback, and report it.",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("drivemtl: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop(DEBUG_ENV, None)  # a later call in this process starts afresh
        else:
            os.environ[DEBUG_ENV] = previous


def _is_misconfiguration(error: Exception) -> bool:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    return isinstance(error, MisconfigurationException)


def _dispatch(argv: list[str], lightning_args: list[str] | None) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        # LightningCLI's own top-level help would list only its four subcommands.
        print(USAGE, end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] not in _BY_NAME and not argv[0].startswith("-"):
        print(f"{USAGE}\ndrivemtl: error: unknown subcommand {argv[0]!r}", file=sys.stderr)
        return 2
    owns_run_dir = RUN_DIR_ENV not in os.environ
    try:
        entry = _BY_NAME[argv[0]].entry if argv[0] in _BY_NAME else None
        if entry is not None:
            module, function = entry.split(":")
            return getattr(import_module(module), function)(argv[1:])
        check_config_files(argv[1:])
        from drivemtl.cli.lightning import run_lightning

        # None lets LightningCLI read sys.argv itself (and not warn about being given both).
        run_lightning(lightning_args)
    finally:
        if owns_run_dir:  # the next run in this process gets a folder of its own
            os.environ.pop(RUN_DIR_ENV, None)
    return 0
