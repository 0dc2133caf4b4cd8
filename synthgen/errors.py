"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (bad option, missing path, unusable input).
The CLI prints its message on one line and exits with status 2; it never shows a traceback.
"""


class UserError(Exception):
    """An error caused by user input, reported as one line without a traceback."""


def require(cond: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise UserError(message)
