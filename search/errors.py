"""The one error type that reaches the user as a single line."""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a config field, a file, a folder, a flag.

    The message is one line that names the file or field and says what is expected.
    The CLI prints it as ``merge-search: error: <message>`` and exits with status 2.
    Raise it before any work starts and before anything is written.
    """
