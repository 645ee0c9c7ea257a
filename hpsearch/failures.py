"""What kind of failure ended a trial, from its error text, and whether retrying can help.

A retry that meets the same out-of-memory error, the same diverged loss or the same
impossible configuration costs a trial's worth of compute and then fails again; a trial
whose node or process died (a raylet killed, a spot node reclaimed, a connection lost)
will most likely succeed on the next try. Ray gives the driver a trial's error as text (a
traceback, often wrapped in ``RayTaskError(...)`` or ``ActorDiedError``), so the
classification reads type names and messages, in this priority order: a node that died
*because* it ran out of memory is an out-of-memory failure, and an actor that died in its
constructor because of a bad configuration is a configuration failure, not a lost node.

Example:
    >>> classify_failure("ray.exceptions.RayTaskError(ResourceExhaustedError): OOM when allocating tensor")
    'out_of_memory'
    >>> "out_of_memory" in RECURRING
    True
"""

from __future__ import annotations

import re
from pathlib import Path

OUT_OF_MEMORY = "out_of_memory"
NAN = "nan"
INVALID_CONFIG = "invalid_config"
TRANSIENT = "transient"
ERROR = "error"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # Tune colours its error files

# Kinds that fail the same way on every retry: record them, do not retry.
RECURRING = frozenset({OUT_OF_MEMORY, NAN, INVALID_CONFIG})

# (kind, pattern), first match wins. Patterns name exception types and the messages
# TensorFlow, CUDA, Python and Ray actually print; none matches a bare word like "memory"
# or "nan", which appear in harmless text ("object store memory", "nanmean").
_PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    (OUT_OF_MEMORY, re.compile(
        r"ResourceExhaustedError|OOM when allocating|MemoryError\b|Unable to allocate|"
        r"out of memory|OUT_OF_MEMORY|running low on memory",
        re.IGNORECASE)),
    (NAN, re.compile(
        r"NonFinite\w*Error|non-?finite (loss|value|metric)|\bloss\b[^\n]{0,40}\b(nan|inf)\b|"
        r"had (NaN|Inf) values|invalid loss",
        re.IGNORECASE)),
    (INVALID_CONFIG, re.compile(
        r"HpsearchError|ValidationError|Negative dimension size|InvalidConfig\w*")),
    (TRANSIENT, re.compile(
        r"RayActorError|ActorDiedError|ActorUnavailableError|WorkerCrashedError|NodeDiedError|"
        r"LocalRayletDiedError|ObjectLostError|OwnerDiedError|ObjectFetchTimedOutError|RaySystemError|"
        r"\bRpcError|ConnectionError|ConnectionResetError|BrokenPipeError|"
        r"actor died|node died|raylet died|worker process has died|died unexpectedly|marked (as )?dead|"
        r"connection (lost|reset|refused)|preempted",
        re.IGNORECASE)),
]


def classify_failure(text: str | None) -> str:
    """The kind of a trial failure: one of ``out_of_memory``, ``nan``, ``invalid_config``,
    ``transient`` or ``error`` (anything else: a bug, worth a retry only if the user says so).

    Args:
        text: The exception's type name and message, or a whole traceback.
    """
    for kind, pattern in _PATTERNS:
        if text and pattern.search(text):
            return kind
    return ERROR


def failure_kind(exc: BaseException) -> str:
    """The kind of an exception raised inside a trial: its own ``failure_kind`` when it
    declares one (hpsearch's diverged-training and does-not-fit errors do), else
    :func:`classify_failure` of its type and message."""
    declared = getattr(exc, "failure_kind", None)
    return declared if isinstance(declared, str) else classify_failure(f"{type(exc).__name__}: {exc}")


def trial_error_text(trial, limit: int = 500) -> str:
    """The trial's last failure in Tune's error file: the exception line first, then the end
    of the traceback (where the trainable raised), at most ``limit`` characters."""
    try:  # the driver's copy is current; the storage copy (get_error) is synced later
        text = Path(trial.error_file).read_text(errors="replace") if trial.error_file else trial.get_error()
    except (OSError, AttributeError):  # no storage (a stub trial) or an unreadable file
        text = None
    block = _ANSI.sub("", str(text or "").rsplit("Failure # ", 1)[-1])  # "N (occurred at ...)\n..."
    lines = [ln.rstrip() for ln in block.splitlines()[1:] if ln.strip(" ^~")]
    last = max((i for i, ln in enumerate(lines) if not ln.startswith(" ")), default=None)
    if last is None:
        return "unknown error (no error file)"
    body, room = "\n".join(lines[:last]), limit - len(lines[last]) - 1
    if len(body) > room:  # keep whole lines from the end
        body = body[-room:].split("\n", 1)[-1] if room > 0 else ""
    return f"{lines[last]}\n{body}".strip()[:limit]
