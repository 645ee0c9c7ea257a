"""The one exception type for problems the user can fix.

The CLI prints an :class:`HpsearchError` as a single line and exits with code 2;
anything else escaping is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2  # the exit code of every problem the user can fix


class HpsearchError(Exception):
    """A user-facing error: bad job file, broken dataset, unreachable server.

    The message must say what is wrong, where (file and key), and what to do.
    """


def first_line(exc: BaseException, limit: int = 200) -> str:
    """An exception as ``Type: first line of its message`` (cut to ``limit``), for one-line errors."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__


class SearchInterrupted(Exception):
    """A search stopped by Ctrl-C or SIGTERM with its state saved: not an error, not a result.

    The CLI prints the message (how to resume) and exits with ``exit_code`` (130 after
    SIGINT, 143 after SIGTERM, the shell's convention).
    """

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
