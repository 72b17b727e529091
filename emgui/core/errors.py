"""Exceptions shared by the core. Messages name the file, field or model at fault."""


class EmguiError(Exception):
    """A user-facing error: its message is shown as is, without a traceback."""


class Cancelled(Exception):  # noqa: N818 - reads better at raise sites than CancelledError
    """Raised inside a job when the user asked it to stop."""
