"""A Ray cluster of real ``ray start`` nodes plus an MLflow server, on your own machines.

What a user with one workstation (several raylets on 127.0.0.1) or two workstations
(``join`` on the second) runs, and what the cluster tests run. Every process gets
Ray's token authentication; the dashboard with its Jobs API and the MLflow server bind
to ``host`` (127.0.0.1 by default: this machine only). The state (ports, token file,
MLflow pid) lives in ``state_dir``, so ``down`` stops exactly this cluster and never
another Ray on the same machine, as ``ray stop`` would.

Example:
    >>> cluster = LocalCluster.create(Path("~/.hpsearch/local-cluster").expanduser())  # doctest: +SKIP
    >>> cluster.start_head(cpus=1); cluster.add_worker(cpus=1); cluster.start_mlflow()  # doctest: +SKIP
    >>> cluster.stop()                                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from hpsearch.cluster.auth import create_token_file, token_env
from hpsearch.errors import HpsearchError
from hpsearch.mlflow_server import mlflow_server_command, mlflow_server_env
from hpsearch.processes import process_tree, signal_all

STATE_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
DEFAULT_STATE_DIR = Path("~/.hpsearch/local-cluster")


@dataclasses.dataclass
class LocalCluster:
    """Addresses and processes of one local cluster, saved in ``state_dir/cluster.json``.

    Attributes:
        state_dir: Token file, MLflow store and logs.
        host: Address of the dashboard (Jobs API) and MLflow server.
        gcs_port, dashboard_port, client_port, mlflow_port: Ray's and MLflow's ports.
        temp_dir: Ray's session folder of this cluster; short, as Ray's socket paths must be.
        mlflow_pid: The running MLflow server, if any.
    """

    state_dir: Path
    host: str = "127.0.0.1"
    gcs_port: int = 6379
    dashboard_port: int = 8265
    client_port: int = 10001
    mlflow_port: int = 5000
    temp_dir: str = ""
    mlflow_pid: int | None = None

    @classmethod
    def create(cls, state_dir: Path, **ports) -> LocalCluster:
        """A new cluster description (nothing started); refuses a folder in use."""
        state_dir = Path(state_dir).expanduser().resolve()
        if (state_dir / STATE_FILE).exists():
            running = cls.load(state_dir)
            if running.alive():
                raise HpsearchError(
                    f"{state_dir}: a local cluster is already running there "
                    f"({running.dashboard_url}); `hpsearch cluster down` stops it"
                )
        state_dir.mkdir(parents=True, exist_ok=True)
        cluster = cls(state_dir, **ports)
        cluster.temp_dir = cluster.temp_dir or f"/tmp/hpsearch-ray-{cluster.gcs_port}"
        cluster._write_token()
        cluster.save()
        return cluster

    @classmethod
    def for_worker(cls, state_dir: Path, gcs_port: int) -> LocalCluster:
        """This machine's side of a cluster whose head runs elsewhere (or here)."""
        state_dir = Path(state_dir).expanduser().resolve()
        if (state_dir / STATE_FILE).exists():
            return cls.load(state_dir)
        cluster = cls(state_dir, gcs_port=gcs_port, temp_dir=f"/tmp/hpsearch-ray-{gcs_port}")
        if not cluster.token_path.exists():
            raise HpsearchError(
                f"{cluster.token_path}: missing; copy the head's token file there (mode 600), "
                "e.g. scp HEAD:.hpsearch/local-cluster/auth_token"
            )
        cluster.save()
        return cluster

    @classmethod
    def load(cls, state_dir: Path) -> LocalCluster:
        path = Path(state_dir).expanduser().resolve() / STATE_FILE
        if not path.exists():
            raise HpsearchError(f"{path.parent}: no local cluster here; `hpsearch cluster up` starts one")
        fields = json.loads(path.read_text())
        return cls(**{**fields, "state_dir": Path(fields["state_dir"])})

    def save(self) -> None:
        payload = {**dataclasses.asdict(self), "state_dir": str(self.state_dir)}
        (self.state_dir / STATE_FILE).write_text(json.dumps(payload, indent=2))

    # Addresses a client needs.

    @property
    def gcs_address(self) -> str:
        return f"{self.host}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.host}:{self.dashboard_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def token_path(self) -> Path:
        return self.state_dir / TOKEN_FILE

    def client_env(self) -> dict[str, str]:
        """What a shell needs to submit to this cluster (the token stays in its file)."""
        return {"RAY_ADDRESS": self.dashboard_url, "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(self.token_path)}

    # Starting and stopping.

    def start_head(self, cpus: int | None = None, gpus: int | None = None,
                   object_store_mb: int | None = None) -> None:
        """``ray start --head`` with the dashboard (Jobs API) on ``host`` only."""
        self._ray_start(["--head", f"--port={self.gcs_port}", "--include-dashboard=true",
                         f"--dashboard-host={self.host}", f"--dashboard-port={self.dashboard_port}",
                         f"--ray-client-server-port={self.client_port}", f"--temp-dir={self.temp_dir}"],
                        cpus, gpus, object_store_mb)
        self._wait(self._jobs_api_answers, 60, f"the Ray Jobs API at {self.dashboard_url}")

    def add_worker(self, cpus: int | None = None, gpus: int | None = None,
                   object_store_mb: int | None = None, address: str | None = None) -> None:
        """``ray start --address``: one more raylet with its own resources.

        Each node gets its own session folder: two raylets sharing one would also share
        the unpacked job packages, and one node's clean-up would delete the folder the
        other node's driver runs in.
        """
        import glob

        temp_dir = f"{self.temp_dir}-{len(glob.glob(self.temp_dir + '-*')) + 1}"
        self._ray_start([f"--address={address or self.gcs_address}", f"--temp-dir={temp_dir}"],
                        cpus, gpus, object_store_mb)

    def start_mlflow(self) -> None:
        """An ``mlflow server`` on ``host`` (SQLite store, artifacts served by it)."""
        if self.mlflow_pid and psutil.pid_exists(self.mlflow_pid):
            return
        server = start_mlflow_server(f"sqlite:///{self.state_dir / 'mlflow.db'}", self.state_dir / "mlartifacts",
                                     host=self.host, port=self.mlflow_port, log=self.state_dir / "mlflow.log")
        self.mlflow_pid = server.pid
        self.save()

    def stop_mlflow(self, sig: int = signal.SIGTERM) -> None:
        """Stop the MLflow server and its worker processes (its whole process group)."""
        if self.mlflow_pid:
            signal_all(process_tree(self.mlflow_pid), sig)
            self.mlflow_pid = None
            self.save()

    def stop(self) -> int:
        """Stop every process of this cluster (Ray's and MLflow's); return how many."""
        self.stop_mlflow()
        procs = self.ray_processes()
        signal_all(procs, signal.SIGTERM)
        _, alive = psutil.wait_procs(procs, timeout=10)
        signal_all(alive, signal.SIGKILL)
        return len(procs)

    # Inspecting.

    def ray_processes(self) -> list[psutil.Process]:
        """This cluster's Ray processes (found by its session folder) and their children."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            if any(self.temp_dir in part for part in proc.info["cmdline"] or ()):
                found.update((p.pid, p) for p in process_tree(proc.pid))
        return list(found.values())

    def raylet_pids(self) -> dict[str, int]:
        """Node id → raylet pid, for the nodes of this cluster running on this machine."""
        pids = {}
        for proc in self.ray_processes():
            try:
                args = proc.cmdline()
            except psutil.Error:
                continue
            if args and Path(args[0]).name == "raylet":
                node = next((a.split("=", 1)[1] for a in args if a.startswith("--node_id=")), None)
                if node:
                    pids[node] = proc.pid
        return pids

    def nodes(self) -> list[dict]:
        """Alive nodes with their resources, from Ray's state API."""
        from ray.util.state import list_nodes

        try:
            with token_env(self.token_path):
                nodes = list_nodes(address=self.dashboard_url, filters=[("state", "=", "ALIVE")],
                                   raise_on_missing_output=False)
        except Exception as exc:  # refused, timed out, 5xx: the head is down
            raise HpsearchError(f"{self.dashboard_url}: Ray's state API not reachable ({type(exc).__name__}); "
                                "is the cluster up? `hpsearch cluster up` starts it") from None
        return [{"node_id": n.node_id, "head": n.is_head_node, "resources": n.resources_total} for n in nodes]

    def alive(self) -> bool:
        return bool(self.ray_processes()) or bool(self.mlflow_pid and psutil.pid_exists(self.mlflow_pid))

    # Internals.

    def _write_token(self) -> None:
        create_token_file(self.token_path)

    def _ray_start(self, args: list[str], cpus, gpus, object_store_mb) -> None:
        # Ray's agent port is fixed (52365) unless given: a second raylet on this machine,
        # or any other Ray here, would take it and leave that node without a job agent.
        command = [str(Path(sys.executable).with_name("ray")), "start", *args, "--disable-usage-stats",
                   f"--dashboard-agent-listen-port={free_port()}"]
        command += [f"--num-cpus={cpus}"] if cpus is not None else []
        command += [f"--num-gpus={gpus}"] if gpus is not None else []
        command += [f"--object-store-memory={object_store_mb * 2**20}"] if object_store_mb else []
        # Job entrypoints (`python -m hpsearch ...`) run with the raylet's PATH: make `python`
        # this interpreter, the one with hpsearch's dependencies.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        env.pop("RAY_ADDRESS", None)  # `ray start --head` would otherwise try to join it
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180, check=False)
        with open(self.state_dir / "ray-start.log", "a") as log:
            log.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}\n")
        if done.returncode != 0:
            last = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:]
            raise HpsearchError(
                f"ray start failed ({' '.join(last)[:300]}); see {self.state_dir / 'ray-start.log'}"
            )

    def _jobs_api_answers(self) -> bool:
        from ray.job_submission import JobSubmissionClient

        try:
            with token_env(self.token_path):
                JobSubmissionClient(self.dashboard_url).list_jobs()
            return True
        except Exception:  # not up yet: connection refused, 5xx while modules load
            return False

    @staticmethod
    def _wait(ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.5)
        raise HpsearchError(f"{what} did not come up within {timeout_s:.0f} s")


def start_mlflow_server(store_uri: str, artifacts: Path, *, host: str = "127.0.0.1", port: int = 5000,
                        log: Path | None = None, timeout_s: float = 60) -> subprocess.Popen:
    """Start ``mlflow server`` in its own process group and return once it accepts connections.

    Args:
        store_uri: Backend store (``sqlite:///...``); its tables are created here first.
        artifacts: Folder the server stores uploaded artifacts in.
        host, port: Where it listens (127.0.0.1: this machine only).
        log: File for its output (appended); none: discarded.
        timeout_s: How long it may take to listen; its imports alone can take half a minute
            on a loaded 2-core machine.

    Raises:
        HpsearchError: It did not listen within ``timeout_s`` (it is killed).
    """
    from hpsearch.tracking import check_reachable

    # Create the tables in-process: ~1.5 s instead of ~10 s in the server's first start.
    check_reachable(store_uri)
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        server = subprocess.Popen(
            mlflow_server_command(store_uri, host, port, "--artifacts-destination", str(artifacts)),
            env=mlflow_server_env(), cwd=artifacts.parent, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
            start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return server
        time.sleep(0.1)
    os.killpg(server.pid, signal.SIGKILL)
    raise HpsearchError(f"the MLflow server at http://{host}:{port} did not listen within {timeout_s:.0f} s"
                        + (f" (see {log})" if log else ""))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now (outside Ray's worker port range, 10002-19999)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False
