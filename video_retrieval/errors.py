"""Exceptions that carry a one-line, user-facing cause.

The CLI prints ``UserError`` messages without a traceback; anything else is a bug.
"""


class UserError(Exception):
    """A mistake in the user's input (path, query, config, model name)."""


class VideoDecodeError(UserError):
    """A video could not be decoded; the message names the path and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")
