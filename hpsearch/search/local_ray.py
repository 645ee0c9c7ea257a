"""Starting (or attaching to) the Ray a search runs on; the local default as closed as Ray allows.

A plain ``hpsearch run`` starts a private Ray on this machine. Ray 2.60 makes that
reachable from the network unless told otherwise, in two ways this module closes:

* **Addresses.** ``ray.init(_node_ip_address="127.0.0.1")`` is silently replaced by the
  machine's routable address (``services.resolve_ip_for_localhost``), so the GCS, raylet,
  workers and agents listened on all interfaces and the metrics endpoints (autoscaler
  44217, dashboard 44227, the agent's export port) on 0.0.0.0, answering anyone. Ray
  uses the loopback address only where it disables multi-machine clusters
  (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its macOS/Windows default); that is what a
  local search is, so every Ray process of it listens on 127.0.0.1 only.
* **The token.** A new local Ray turns on token authentication and, if no token is
  configured, writes ``~/.ray/auth_token`` with the default umask (mode 644: any local
  user could read it). hpsearch instead gives Ray ``~/.hpsearch/ray_auth_token``, created
  mode 600, unless the user configured a token (``RAY_AUTH_TOKEN[_PATH]``) or a mode
  (``RAY_AUTH_MODE``) themselves.

* **The session folder.** Ray makes its folders (logs, sockets, unpacked runtime
  environments) writable by everyone (``try_make_directory_shared``: mode 777) under
  ``/tmp/ray``. hpsearch puts them under ``/tmp/hpsearch-UID/ray``, in a folder only this
  user may enter (mode 700), so other local users can neither read the trials' logs nor
  plant files Ray would load.

What stays open is reachable from this machine only: Ray's ports on 127.0.0.1 (the gRPC
ones need the token; the Prometheus metrics ones do not).
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import ray

from hpsearch.cluster.auth import check_token_file, create_token_file, use_token_file
from hpsearch.errors import HpsearchError

LOCAL_ONLY_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_token_path() -> Path:
    """Where a local search's Ray token lives (mode 600)."""
    return Path.home() / ".hpsearch" / "ray_auth_token"


def init_ray(address: str | None) -> None:
    """Attach to the Ray cluster at ``address`` (or ``$RAY_ADDRESS``), else start a private local one.

    Does nothing if Ray is already initialised in this process (a test's, or a Ray job's).

    Raises:
        HpsearchError: The token file configured for the local Ray is readable by others.
    """
    # With storage.checkpoint_interval_s: 0 (a checkpoint per epoch, num_to_keep=2; see
    # tuner.py) Ray's "snapshotting may become a bottleneck" warning is expected, not news.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    _private_token()
    # "local": a bare ray.init() would attach to whatever `ray start` ran last here.
    with _loopback_only():
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 _temp_dir=str(private_temp_dir() / "ray"))


def private_temp_dir() -> Path:
    """``/tmp/hpsearch-UID``: created mode 700, and refused if someone else could have made or entered it.

    Raises:
        HpsearchError: It is not a folder of this user's that only this user may enter.
    """
    path = Path(tempfile.gettempdir()) / f"hpsearch-{os.getuid()}"
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)  # lstat: a symlink planted by another user is not followed
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise HpsearchError(
            f"{path}: not a private folder of this user (owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); "
            "Ray's session files go there: remove it or `chmod 700` it if it is yours"
        )
    return path


def _private_token() -> None:
    if "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ:
        return  # the user's choice (a token in the environment has no file to check)
    configured = os.environ.get("RAY_AUTH_TOKEN_PATH")
    path = check_token_file(Path(configured)) if configured else create_token_file(local_token_path())
    use_token_file(path)


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Ray picks 127.0.0.1 as this node's address, in this process and the ones ray.init starts.

    The environment variable reaches the processes Ray starts (and the workers their raylet
    starts); this process read it when Ray was imported, so its constant is set too.
    """
    from ray._private import ray_constants

    saved_env, saved_constant = os.environ.get(LOCAL_ONLY_VARIABLE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_VARIABLE] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_constant
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_VARIABLE, None)
        else:
            os.environ[LOCAL_ONLY_VARIABLE] = saved_env
