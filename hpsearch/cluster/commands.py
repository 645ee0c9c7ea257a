"""The cluster commands of the CLI: ``submit``, ``status``, ``logs``, ``stop``, ``cluster``.

Kept apart from :mod:`hpsearch.cli` so the front door stays short; the wiring is the
same: parse, call the package, print.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hpsearch.cluster import jobs
from hpsearch.cluster.local import DEFAULT_STATE_DIR, LocalCluster

ADDRESS_HELP = "Ray Jobs API, e.g. http://127.0.0.1:8265 (default: $RAY_ADDRESS)"


def add_commands(commands) -> None:
    """Register the cluster commands on the CLI's subparsers."""
    submit = commands.add_parser("submit", help="submit a search to a Ray cluster as a Ray job")
    submit.add_argument("job", type=Path, nargs="?", help="job YAML file inside the project folder")
    submit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any key (as for `run`); repeatable")
    submit.add_argument("--address", help=ADDRESS_HELP)
    submit.add_argument("--resume", metavar="EXPERIMENT",
                        help="instead of a job file: resume this experiment folder (its path on the cluster)")
    submit.add_argument("--accept-data-change", action="store_true",
                        help="with --resume: go on although the dataset changed (see `hpsearch resume`)")
    submit.add_argument("--working-dir", type=Path,
                        help="project folder uploaded as the job's working directory (default: .)")
    submit.set_defaults(func=_cmd_submit)

    status = commands.add_parser("status", help="a submitted search's status, or all of them")
    status.add_argument("job_id", nargs="?", help="the id `submit` printed (default: list hpsearch jobs)")
    status.add_argument("--address", help=ADDRESS_HELP)
    status.set_defaults(func=_cmd_status)

    logs = commands.add_parser("logs", help="a submitted search's output")
    logs.add_argument("job_id")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing until the job ends; exit 1 unless it succeeded")
    logs.add_argument("--address", help=ADDRESS_HELP)
    logs.set_defaults(func=_cmd_logs)

    stop = commands.add_parser("stop", help="stop a submitted search (resume it later with submit --resume)")
    stop.add_argument("job_id")
    stop.add_argument("--address", help=ADDRESS_HELP)
    stop.set_defaults(func=_cmd_stop)

    cluster = commands.add_parser("cluster", help="a Ray cluster + MLflow server on this machine").add_subparsers(
        dest="cluster_command", required=True, metavar="SUBCOMMAND")
    up = cluster.add_parser("up", help="start a head, N worker nodes and an MLflow server, token auth on")
    _state_dir_option(up)
    up.add_argument("--workers", type=int, default=1, help="worker nodes (raylets) besides the head (default 1)")
    up.add_argument("--cpus-per-node", type=int, help="CPUs each node offers (default: all of them)")
    up.add_argument("--gpus-per-node", type=int, help="GPUs each worker offers (logical; default: detected)")
    up.add_argument("--object-store-mb", type=int, help="object store per node (default: Ray's, 30%% of RAM)")
    up.add_argument("--host", default="127.0.0.1",
                    help="address of the dashboard, Jobs API and MLflow (default 127.0.0.1: this machine only)")
    up.add_argument("--port", type=int, default=6379, help="Ray GCS port (default 6379)")
    up.add_argument("--dashboard-port", type=int, default=8265)
    up.add_argument("--client-port", type=int, default=10001, help="Ray client server port (default 10001)")
    up.add_argument("--mlflow-port", type=int, default=5000)
    up.add_argument("--no-mlflow", action="store_true", help="do not start an MLflow server")
    up.set_defaults(func=_cmd_cluster_up)

    join = cluster.add_parser("join", help="add this machine to a cluster as a worker node")
    join.add_argument("address", help="head's GCS address, HOST:6379")
    _state_dir_option(join)
    join.add_argument("--cpus", type=int)
    join.add_argument("--gpus", type=int)
    join.add_argument("--object-store-mb", type=int)
    join.set_defaults(func=_cmd_cluster_join)

    down = cluster.add_parser("down", help="stop every process of the local cluster")
    _state_dir_option(down)
    down.set_defaults(func=_cmd_cluster_down)

    show = cluster.add_parser("status", help="the local cluster's nodes, resources and addresses")
    _state_dir_option(show)
    show.set_defaults(func=_cmd_cluster_status)


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"cluster state: token file, MLflow store, logs (default {DEFAULT_STATE_DIR})")


def _cmd_submit(args: argparse.Namespace) -> int:
    if (args.job is None) == (args.resume is None):
        raise jobs.HpsearchError("submit: give either a job file or --resume EXPERIMENT")
    if args.accept_data_change and args.resume is None:
        raise jobs.HpsearchError("submit: --accept-data-change goes with --resume EXPERIMENT")
    job_id = jobs.submit_search(args.job, args.overrides, address=args.address, working_dir=args.working_dir,
                                resume=args.resume, accept_data_change=args.accept_data_change)
    print(job_id)
    print(f"follow it: hpsearch logs {job_id} --follow", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    if args.job_id is None:
        print("\n".join(jobs.list_jobs(address=args.address)) or "no hpsearch jobs on this cluster")
    else:
        print(jobs.job_status(args.job_id, address=args.address))
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    if not args.follow:
        print(jobs.job_logs(args.job_id, address=args.address), end="")
        return 0
    for chunk in jobs.follow_logs(args.job_id, address=args.address):
        print(chunk, end="", flush=True)
    status = jobs.final_status(args.job_id, address=args.address)
    print(f"hpsearch: job {args.job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _cmd_stop(args: argparse.Namespace) -> int:
    stopped = jobs.stop_job(args.job_id, address=args.address)
    print(f"{args.job_id}: {'stop requested' if stopped else 'had already ended'}")
    return 0


def _cmd_cluster_up(args: argparse.Namespace) -> int:
    if args.workers < 0:
        raise jobs.HpsearchError(f"--workers {args.workers}: must be 0 or more")
    cluster = LocalCluster.create(args.dir, host=args.host, gcs_port=args.port,
                                  dashboard_port=args.dashboard_port, client_port=args.client_port,
                                  mlflow_port=args.mlflow_port)
    try:
        cluster.start_head(args.cpus_per_node, 0 if args.workers else args.gpus_per_node, args.object_store_mb)
        for _ in range(args.workers):
            cluster.add_worker(args.cpus_per_node, args.gpus_per_node, args.object_store_mb)
        if not args.no_mlflow:
            cluster.start_mlflow()
    except BaseException:
        cluster.stop()  # no half-started cluster left behind
        raise
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: the Jobs API on {args.host} runs code for anyone holding the token; "
              "keep it on a private network", file=sys.stderr)
    print(f"cluster up: head + {args.workers} worker node(s); dashboard and Jobs API {cluster.dashboard_url}")
    if not args.no_mlflow:
        print(f"MLflow server {cluster.mlflow_uri} (store {cluster.state_dir / 'mlflow.db'})")
    print(f"more nodes: hpsearch cluster join {cluster.gcs_address} (on another machine: bring the cluster "
          f"up with --host set to this machine's private address, then copy {cluster.token_path} there first)")
    print("to submit from this shell:")
    for key, value in cluster.client_env().items():
        print(f"export {key}={value}")
    return 0


def _cmd_cluster_join(args: argparse.Namespace) -> int:
    port = int(args.address.rsplit(":", 1)[-1]) if ":" in args.address else 6379
    cluster = LocalCluster.for_worker(args.dir, gcs_port=port)
    cluster.add_worker(args.cpus, args.gpus, args.object_store_mb, address=args.address)
    print(f"joined {args.address}; `hpsearch cluster down --dir {cluster.state_dir}` leaves")
    return 0


def _cmd_cluster_down(args: argparse.Namespace) -> int:
    cluster = LocalCluster.load(args.dir)
    print(f"stopped {cluster.stop()} Ray process(es) and the MLflow server of {cluster.state_dir}")
    return 0


def _cmd_cluster_status(args: argparse.Namespace) -> int:
    cluster = LocalCluster.load(args.dir)
    pids = cluster.raylet_pids()
    print(f"dashboard and Jobs API {cluster.dashboard_url}; MLflow {cluster.mlflow_uri}")
    for node in cluster.nodes():
        kind = "head  " if node["head"] else "worker"
        resources = ", ".join(f"{k}={v:g}" for k, v in sorted(node["resources"].items())
                              if k in ("CPU", "GPU", "memory") or k.startswith("accelerator"))
        print(f"{kind} {node['node_id']}  raylet pid {pids.get(node['node_id'], '-')}  {resources}")
    return 0
