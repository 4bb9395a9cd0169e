"""User-facing errors: the CLI prints their message alone, without a traceback."""

import re


class DriveMTLError(Exception):
    """An error caused by user input (a file, an option); its message says what to do."""


MAX_LISTED = 20
"""How many problems one error message lists (the count says how many there are)."""


def problem_list(header: str, problems: list[str], advice: str = "") -> DriveMTLError:
    """One error for many bad lines or files: ``header``, the first :data:`MAX_LISTED`
    problems (one per line, indented by the caller), then ``advice``."""
    shown = problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        shown.append(f"  ... and {len(problems) - MAX_LISTED} more")
    return DriveMTLError(f"{header}:\n" + "\n".join(shown) + (f"\n{advice}" if advice else ""))


_UNION = "Does not validate against any of the Union subtypes"


def optional_value_error(message: str) -> str:
    """jsonargparse's error for a bad value of an ``X | None`` option, without the ``None``
    alternative (nobody who gave a value meant ``null``), on one line:
    ``Parser key "k": <X's error>, got <value>``; nested ones likewise. An error that is a whole
    sentence (ends with a full stop) is kept without the value.

    Any other message is returned as it is.
    """
    head, union, rest = message.partition(_UNION)
    errors_text = rest.partition("Errors:")[2]
    body, _, given = errors_text.rpartition("Given value type:")
    marker = re.search(r"\n(\s*)- ", body)
    if not union or marker is None:
        return message
    items = body.split(f"\n{marker.group(1)}- ")[1:]
    items = [i for i in items if i.strip() != "Expected a <class 'NoneType'>"]
    if len(items) != 1:
        return message
    error = optional_value_error(re.sub(r"^Not of type \w+: ", "", items[0].strip()))
    value = given.partition("Given value:")[2].strip()
    error = " ".join(error.split())
    # A sentence (a validator's own message) already names what is wrong; jsonargparse's
    # "Expected a <class 'float'>" needs the value.
    if value and not error.endswith(".") and "Got value" not in error and ", got " not in error:
        error += f", got {value}"
    return f"{' '.join(head.split())} {error}".strip()
