"""The one exception type for problems the user can fix.

The CLI prints an :class:`HpsearchError` as a single line and exits with code 2;
anything else escaping is a bug and keeps its traceback.
"""


class HpsearchError(Exception):
    """A user-facing error: bad job file, broken dataset, unreachable server.

    The message must say what is wrong, where (file and key), and what to do.
    """
