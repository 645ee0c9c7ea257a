"""Child processes that never outlive hpsearch: own process group, signals forwarded, group stopped.

A server such as ``mlflow ui`` is a tree: the command, its uvicorn workers and (MLflow 3)
a job runner with its consumers. Killing only the command's pid orphans the rest, which
then runs forever (seen: ~16 processes, ~3 GB, left by one `hpsearch ui`). So the tree
is started in a session of its own, a SIGINT or SIGTERM to hpsearch is forwarded to the
whole group, and whatever is left of the group when hpsearch returns is terminated, then
killed.

Example:
    >>> run_foreground([sys.executable, "-m", "mlflow", "ui"])  # doctest: +SKIP
    130
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil

FORWARDED = (signal.SIGINT, signal.SIGTERM)


def run_foreground(command: list[str], *, grace_s: float = 10, **popen) -> int:
    """Run ``command`` in its own session until it exits; stop all it started before returning.

    A SIGINT (Ctrl-C) or SIGTERM sent to this process is forwarded to the child's whole
    process group; on return, also after an exception, the group is stopped
    (:func:`stop_group`).

    Returns:
        The child's exit code, or ``128 + signal`` if this process was interrupted.
    """
    received: list[int] = []

    def forward(signum, _frame):
        received.append(signum)
        _killpg(child.pid, signum)

    child = subprocess.Popen(command, start_new_session=True, **popen)
    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop_group(child, grace_s)
    return 128 + received[0] if received else code


def stop_group(child: subprocess.Popen, grace_s: float = 10) -> None:
    """SIGTERM the child's process group (``start_new_session``), then SIGKILL what is left.

    Works after the child itself has exited: its orphans keep the group id.
    """
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5)):
        _killpg(child.pid, sig)
        deadline = time.monotonic() + wait_s
        while True:
            if child.poll() is not None and not group_members(child.pid):
                return
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)


def group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (OSError, psutil.Error):  # exited meanwhile
            continue
    return members


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants, as far as they are still alive."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def signal_all(procs: list[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each process, ignoring those already gone."""
    for proc in procs:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group is gone
        pass
