"""JSON and JSON Lines from users' files, where every way a file can be bad is one message.

``json`` raises ``JSONDecodeError`` for malformed text, but also ``RecursionError`` for deeply
nested values, ``ValueError`` for huge integers and ``UnicodeDecodeError`` (mid-file) for text
that is not UTF-8. The readers here turn each into a message naming the file and the line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from drivemtl.errors import DriveMTLError


class BadJSON(ValueError):
    """Text that is not usable JSON; the message says why (no file or line: callers add them)."""


def loads(text: str | bytes) -> Any:
    """Parse one JSON value, with one exception type for every kind of bad text.

    orjson: twice as fast as ``json`` on manifest lines (``benchmarks/data_scale.py``), and
    strict JSON (``NaN`` and ``Infinity`` are errors, as the standard says).

    Raises:
        BadJSON: Malformed, too deeply nested, or with a number out of range.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or "recursion limit" in str(e).lower():
            raise BadJSON("JSON nested too deeply to read") from None
        hint = "; NaN and Infinity are not JSON numbers" if _NON_NUMBERS.search(e.doc) else ""
        raise BadJSON(f"malformed JSON ({e.msg} at column {e.colno}{hint})") from None


_NON_NUMBERS = re.compile(r"\b(NaN|-?Infinity)\b")


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of every line of a UTF-8 text file, streamed.

    A UTF-8 byte-order mark (a spreadsheet's "CSV UTF-8") is dropped.

    Raises:
        DriveMTLError: For a line that is not UTF-8, naming the file and line.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise DriveMTLError(
                    f"{path}:{number}: not UTF-8 text (byte {e.start + 1} of the line: "
                    f"{e.reason}). Save the file as UTF-8."
                ) from None
            yield number, text


def iter_objects(
    path: str | Path, problems: list[tuple[int, str]] | None = None
) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-empty line of a JSON Lines file, streamed.

    Args:
        path: The file.
        problems: When given, a bad line is appended here as ``(line number, "  path:line:
            what")`` and skipped, so that a caller can report every bad line at once.

    Raises:
        DriveMTLError: For a line that is not a JSON object (without ``problems``), or text
            that is not UTF-8, naming the file and line.
    """
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = loads(line)
            problem = None if isinstance(obj, dict) else "expected a JSON object per line"
        except BadJSON as e:
            problem = str(e)
        if problem is None:
            yield number, obj
        elif problems is None:
            raise DriveMTLError(f"{path}:{number}: {problem}.")
        else:
            problems.append((number, f"  {path}:{number}: {problem}"))


def load_file(path: str | Path, what: str) -> Any:
    """The JSON value of a whole file.

    Raises:
        DriveMTLError: When the file is missing, unreadable, not UTF-8 or not JSON.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DriveMTLError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise DriveMTLError(f"{what} {path} is a folder; give the JSON file.") from None
    except OSError as e:
        raise DriveMTLError(f"Cannot read {what} {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DriveMTLError(
            f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})."
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DriveMTLError(
            f"{what} {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except (RecursionError, ValueError) as e:
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise DriveMTLError(f"{what} {path} is not usable JSON: {reason}") from None
