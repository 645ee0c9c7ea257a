"""Trial failures classified from their text: a table, then errors real libraries raise."""

from __future__ import annotations

import os
import signal
import traceback

import numpy as np
import pytest
import ray

from hpsearch.errors import HpsearchError
from hpsearch.failures import RECURRING, classify_failure

TABLE = [
    # Out of memory: TensorFlow, CUDA, Python, Ray's memory monitor.
    ("ResourceExhaustedError: OOM when allocating tensor with shape[8,64,256,256]", "out_of_memory"),
    ("ray.exceptions.RayTaskError(ResourceExhaustedError): ray::SegmentationTrainable.train()", "out_of_memory"),
    ("failed to allocate 2.00G (2147483648 bytes) from device: CUDA_ERROR_OUT_OF_MEMORY: out of memory",
     "out_of_memory"),
    ("MemoryError", "out_of_memory"),
    ("numpy._core._exceptions._ArrayMemoryError: Unable to allocate 8.00 PiB for an array", "out_of_memory"),
    ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.", "out_of_memory"),
    ("ActorDiedError: The actor is dead because its worker process has died. Worker exit type: "
     "NODE_OUT_OF_MEMORY", "out_of_memory"),  # died, but of memory: it will again
    # A diverged loss.
    ("NonFiniteLossError: epoch 3: loss is nan", "nan"),
    ("hpsearch: non-finite loss at epoch 2 (inf)", "nan"),
    ("InvalidArgumentError: Tensor had NaN values [Op:CheckNumerics]", "nan"),
    # A configuration that cannot train.
    ("hpsearch.errors.HpsearchError: resources: gpus_per_trial: 0.1 of a 4096 MB GPU leaves -103 MB", "invalid_config"),
    ("pydantic_core._pydantic_core.ValidationError: 1 validation error for TrainParams", "invalid_config"),
    ("ValueError: Negative dimension size caused by subtracting 2 from 1", "invalid_config"),
    ("ActorDiedError: The actor died because of an error raised in its creation task, "
     "ray::SegmentationTrainable.__init__() HpsearchError: params: depth", "invalid_config"),
    # Lost processes, nodes and connections: worth a retry.
    ("ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task.", "transient"),
    ("RayActorError: The actor experienced an error before finishing this task.", "transient"),
    ("ray.exceptions.NodeDiedError: The node with node id 7f3a has been marked dead", "transient"),
    ("The task's local raylet died. Check raylet.out for more information.", "transient"),
    ("ConnectionResetError: [Errno 104] Connection reset by peer", "transient"),
    ("grpc: connection lost to the GCS", "transient"),
    # Anything else.
    ("ZeroDivisionError: division by zero", "error"),
    ("KeyError: 'val_dice'", "error"),
    ("ObjectStoreFullError-free text about object store memory and np.nanmean", "error"),  # no bare words
    ("", "error"),
    (None, "error"),
]


@pytest.mark.parametrize(("text", "kind"), TABLE)
def test_classified(text, kind):
    assert classify_failure(text) == kind


def test_recurring_kinds_are_not_retried_and_transient_ones_are():
    assert RECURRING == {"out_of_memory", "nan", "invalid_config"}
    assert "transient" not in RECURRING and "error" not in RECURRING


def _text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def test_real_out_of_memory_errors():
    import tensorflow as tf

    with pytest.raises(tf.errors.ResourceExhaustedError) as tf_oom:
        tf.zeros((1 << 40,))  # 4 TiB: refused by the CPU allocator at once
    with pytest.raises(MemoryError) as np_oom:
        np.empty(1 << 50)
    assert classify_failure(_text(tf_oom.value)) == "out_of_memory"
    assert classify_failure(_text(np_oom.value)) == "out_of_memory"


@ray.remote(num_cpus=0)
class _Actor:
    def __init__(self, fail: bool = False):
        if fail:
            raise HpsearchError("params: depth: 6 halves 32x32 slices below 1 pixel; use depth <= 5")

    def pid(self) -> int:
        return os.getpid()

    def oom(self):
        np.empty(1 << 50)


def test_real_ray_errors():
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    try:
        actor = _Actor.remote()
        with pytest.raises(ray.exceptions.RayTaskError) as oom:
            ray.get(actor.oom.remote())
        os.kill(ray.get(actor.pid.remote()), signal.SIGKILL)  # the trial process dies
        with pytest.raises(ray.exceptions.RayActorError) as died:
            ray.get(actor.pid.remote())
        with pytest.raises(ray.exceptions.RayActorError) as bad_config:
            ray.get(_Actor.remote(fail=True).pid.remote())
    finally:
        ray.shutdown()
    assert classify_failure(_text(oom.value)) == "out_of_memory"
    assert classify_failure(_text(died.value)) == "transient"
    assert classify_failure(_text(bad_config.value)) == "invalid_config"


def test_hpsearch_errors_declare_their_kind():
    from hpsearch.failures import failure_kind
    from hpsearch.models.footprint import DoesNotFit
    from hpsearch.trainer import TrainingDiverged

    assert failure_kind(TrainingDiverged("training diverged at epoch 3 (loss is nan)")) == "nan"
    assert failure_kind(DoesNotFit("needs about 3 GiB")) == "invalid_config"
    assert failure_kind(ConnectionResetError("peer")) == "transient"
