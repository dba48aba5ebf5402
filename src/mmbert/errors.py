"""One exception type for bad user input.

Every function that validates input a user controls (files, configs, checkpoints, CLI values)
raises :class:`MmbertError` with one line naming what is wrong and what was expected. The CLI
prints ``error: <message>`` and exits with code 2, without a traceback.
"""


class MmbertError(Exception):
    """Bad input: the message names the file/field and what was expected."""
