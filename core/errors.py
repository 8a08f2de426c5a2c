"""The one exception type users see: its message is printed as a single line by the CLI and the UI."""


class ForgetlessError(Exception):
    """A problem with the user's input or environment, explained in one line (no traceback shown)."""
