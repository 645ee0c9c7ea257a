"""The ``mlflow server`` command line hpsearch starts (``hpsearch ui``, the local cluster).

MLflow 3's defaults cost what hpsearch never uses: 4 uvicorn workers, and a job runner
(``mlflow.server.jobs._job_runner``) with seven Huey consumer processes for GenAI jobs
(scorers, trace roll-ups, prompt optimisation). Measured here (benchmarks/mlflow_server_cost.py)
that is 15 processes and 2.5 GB RSS for one UI, against 2 processes and 0.5 GB with one
worker and no jobs, which is all hpsearch's logging and browsing need.
"""

from __future__ import annotations

import os
import sys

# Read by `mlflow server` itself (mlflow/server/__init__.py): no job runner, no Huey consumers.
TRIMMED_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def mlflow_server_command(store_uri: str, host: str, port: int, *extra: str) -> list[str]:
    """``python -m mlflow server`` on ``store_uri`` at ``host:port`` with one worker."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store_uri,
            "--host", host, "--port", str(port), "--workers", "1", *extra]


def mlflow_server_env() -> dict[str, str]:
    """This process's environment with MLflow's job execution turned off."""
    return {**os.environ, **TRIMMED_ENV}
