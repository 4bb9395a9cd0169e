"""User-facing errors: the CLI prints their message alone, without a traceback."""


class DriveMTLError(Exception):
    """An error caused by user input (a file, an option); its message says what to do."""
