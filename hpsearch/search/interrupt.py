"""A search that stops gracefully on Ctrl-C or SIGTERM, and knows it was stopped.

Ray Tune catches SIGINT itself, saves its experiment state and returns from ``fit()`` as if
the search had ended: without this, an interrupted search looks finished (``hpsearch run``
would report partial results as final, and a replay benchmark would count a cut search).

Example:
    >>> with interruptible() as stop:
    ...     pass  # tuner.fit()
    >>> stop.signal is None
    True
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["Stop", "interruptible"]


class Stop:
    """What stopped a search: the first signal received, or None (it ran to its end)."""

    signal: int | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[Stop]:
    """Turn the first SIGINT (Ctrl-C) or SIGTERM into Ray Tune's graceful stop, and remember it.

    Tune stops on SIGUSR1 as on SIGINT: it saves the experiment state once more and returns
    from ``fit()`` as if the search had ended. Routing both signals through SIGUSR1 lets the
    driver know that it did not end: the results are not final, the search is interrupted.
    A second signal stops at once (KeyboardInterrupt).
    """
    stop = Stop()
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        yield stop  # no SIGUSR1 (Windows), or signals cannot be caught here: Tune's own handling
        return

    def handler(signum, frame):
        if stop.signal is not None:
            raise KeyboardInterrupt
        stop.signal = signum
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    tune_own = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours forwards it
    try:
        yield stop
    finally:
        if tune_own is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_own
        for sig, old in previous.items():
            signal.signal(sig, old)
