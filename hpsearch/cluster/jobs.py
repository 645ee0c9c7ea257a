"""Searches as Ray jobs: submit from a laptop, follow, stop.

``hpsearch submit`` checks the job file here, where a typo costs a second, then hands
``python -m hpsearch run JOB`` to the cluster's Jobs API with the project folder as the
job's working directory: the cluster runs the code that was submitted. The driver then
runs on the head node and the trials wherever Ray places them.

Example:
    >>> job_id = submit_search(Path("jobs/demo.yaml"), ["search.num_trials=4"],
    ...                        address="http://127.0.0.1:8265")        # doctest: +SKIP
    >>> job_status(job_id, address="http://127.0.0.1:8265")             # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from hpsearch.cluster.auth import enable_token_if_given
from hpsearch.errors import HpsearchError
from hpsearch.spec import Job, load_job

# Never uploaded (besides Ray's own defaults, .git and .venv): data, results, tracking stores, caches.
# Ray's working_dir limit is 500 MiB, and a dataset has no business in a code package.
# Anchored with a leading slash: gitignore's `data/` would also drop hpsearch/data/.
EXCLUDES = ["/venv/", "/data/", "/results/", "/mlruns/", "/mlartifacts/", "/model/", "/dashboards/screenshots/",
            "*.db", "__pycache__/", ".pytest_cache/", ".hpsearch*"]

AGENT_WAIT_S = 60


def resolve_address(address: str | None) -> str:
    """The Jobs API address: ``--address``, else ``$RAY_ADDRESS``."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise HpsearchError(
            "no Ray cluster given: pass --address http://HEAD:8265 or set RAY_ADDRESS "
            "(`hpsearch cluster up` prints it for a local cluster)"
        )
    return address


def check_submittable(job: Job, job_path: Path, nodes: int) -> None:
    """Refuse what would break once the job runs in a temporary folder on the cluster.

    Relative paths in a submitted job resolve inside the uploaded working directory,
    which Ray deletes when the job ends, and whose excluded folders never arrive.

    Raises:
        HpsearchError: The first problem, with the key and what to do.
    """
    storage = PurePosixPath(job.storage.path)
    if not storage.is_absolute():
        raise HpsearchError(
            f"{job_path}: storage.path {job.storage.path}: relative, so it would land in the job's "
            "temporary working directory on the cluster; give an absolute path on storage the "
            "cluster keeps (e.g. --set storage.path=/mnt/hpsearch/results)"
        )
    job.storage.check_for_cluster(nodes)
    uri = job.tracking.uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise HpsearchError(
            f"{job_path}: tracking.uri {uri}: a relative SQLite file would be lost with the job's "
            "working directory; use the cluster's MLflow server (e.g. --set "
            "tracking.uri=http://127.0.0.1:5000)"
        )
    dataset = job.dataset.path
    if not dataset.is_absolute() and not job.dataset.synthetic and _excluded(dataset):
        raise HpsearchError(
            f"{job_path}: dataset.path {dataset}: relative and inside a folder that is not uploaded; "
            "put the dataset where every run can read it and give its absolute path"
        )


def submit_search(job_path: Path, overrides: list[str], *, address: str | None = None,
                  working_dir: Path | None = None, resume: str | None = None,
                  accept_data_change: bool = False) -> str:
    """Submit ``hpsearch run JOB`` (or ``hpsearch resume EXPERIMENT``) as a Ray job.

    Returns:
        The job's submission id.
    """
    working_dir = (working_dir or Path.cwd()).resolve()
    if resume is not None:
        if not PurePosixPath(resume).is_absolute():
            raise HpsearchError(f"--resume {resume}: give the experiment folder's absolute path on the cluster")
        entrypoint, name = ["resume", resume], PurePosixPath(resume).name
        entrypoint += ["--accept-data-change"] if accept_data_change else []
    else:
        job = load_job(job_path, overrides)
        _check_search_space(job, job_path)
        try:
            relative = job_path.resolve().relative_to(working_dir)
        except ValueError:
            raise HpsearchError(
                f"{job_path}: outside the project folder {working_dir} that is uploaded; "
                "move the job file into it or pass --working-dir"
            ) from None
        check_submittable(job, job_path, count_alive_nodes(address))
        entrypoint = ["run", str(relative)] + [f"--set={item}" for item in overrides]
        name = job.name
    client = _client(address)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    runtime_env = {"working_dir": str(working_dir), "excludes": EXCLUDES,
                   "env_vars": {"PYTHONUNBUFFERED": "1"}}
    # Ray logs every file it skips while packaging; the user asked for a job id.
    logging.getLogger("ray").setLevel(logging.ERROR)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(entrypoint=_shell_command(["python", "-m", "hpsearch", *entrypoint]),
                                     submission_id=f"hpsearch-{name}-{stamp}-{secrets.token_hex(2)}",
                                     runtime_env=runtime_env, metadata={"hpsearch": name})
        except Exception as exc:
            # A head that just started has no job agent yet for a few seconds.
            if "No available agent" in str(exc) and time.monotonic() < deadline:
                time.sleep(1)
                continue
            raise _api_error(resolve_address(address), exc) from None


def job_status(job_id: str, *, address: str | None = None) -> str:
    """One line: the job's status and Ray's message about it."""
    info = _call(address, lambda client: client.get_job_info(job_id))
    message = f" ({info.message})" if info.message else ""
    return f"{job_id}: {info.status.value}{message}"


def list_jobs(*, address: str | None = None) -> list[str]:
    """One line per hpsearch job on the cluster, newest first."""
    jobs = _call(address, lambda client: client.list_jobs())
    ours = [j for j in jobs if (j.metadata or {}).get("hpsearch") is not None]
    ours.sort(key=lambda j: j.start_time or 0, reverse=True)
    return [f"{j.submission_id}  {j.status.value:<9}  {j.entrypoint}" for j in ours]


def job_logs(job_id: str, *, address: str | None = None) -> str:
    return _call(address, lambda client: client.get_job_logs(job_id))


def follow_logs(job_id: str, *, address: str | None = None) -> Iterator[str]:
    """Yield log chunks as the job writes them, until it ends."""
    client = _client(address)
    _call(address, lambda c: c.get_job_status(job_id))  # an unknown id fails here, in one line
    stream = client.tail_job_logs(job_id)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()


def final_status(job_id: str, *, address: str | None = None) -> str:
    return _call(address, lambda client: client.get_job_status(job_id)).value


def stop_job(job_id: str, *, address: str | None = None) -> bool:
    """Ask Ray to stop the job (SIGTERM to the driver, then SIGKILL); False if it had ended."""
    return _call(address, lambda client: client.stop_job(job_id))


def count_alive_nodes(address: str | None) -> int:
    """Alive nodes of the cluster behind the Jobs API address (Ray's state API)."""
    from ray.util.state import list_nodes

    address = resolve_address(address)
    enable_token_if_given()
    try:
        nodes = list_nodes(address=_http(address), filters=[("state", "=", "ALIVE")],
                           raise_on_missing_output=False)
    except Exception as exc:
        raise _api_error(address, exc) from None
    return len(nodes)


def _check_search_space(job: Job, job_path: Path) -> None:
    from hpsearch.space import load_space

    if job.search_space is None:
        raise HpsearchError(f"{job_path}: search_space: missing; name a YAML file of distributions")
    load_space(job.search_space, job.family)


def _excluded(path: Path) -> bool:
    first = path.parts[0] if path.parts else ""
    return any(first == pattern.strip("/") for pattern in EXCLUDES if pattern.startswith("/"))


def _shell_command(words: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(word) for word in words)


def _client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    enable_token_if_given()
    try:
        return JobSubmissionClient(_http(address))
    except Exception as exc:
        raise _api_error(address, exc) from None


def _call(address: str | None, action):
    client = _client(address)
    try:
        return action(client)
    except Exception as exc:
        raise _api_error(resolve_address(address), exc) from None


def _http(address: str) -> str:
    return address if "://" in address else f"http://{address}"


def _api_error(address: str, exc: Exception) -> HpsearchError:
    text = " ".join(str(exc).split())[:300]
    if type(exc).__name__ == "AuthenticationError" or "Unauthorized" in text or "401" in text:
        return HpsearchError(
            f"Ray Jobs API at {address}: authentication failed; export RAY_AUTH_TOKEN_PATH=<the "
            "cluster's token file> (or RAY_AUTH_TOKEN) and RAY_AUTH_MODE=token"
        )
    if "does not exist" in text or "not found" in text.lower():
        return HpsearchError(f"Ray Jobs API at {address}: {text}; `hpsearch status` lists the jobs")
    return HpsearchError(
        f"Ray Jobs API at {address} not usable ({type(exc).__name__}: {text}); start the cluster "
        "(`hpsearch cluster up`) or open the tunnel (`ray dashboard ray_cluster.yaml`)"
    )
