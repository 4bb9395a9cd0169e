"""User-facing errors: the CLI prints their message alone, without a traceback."""


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
