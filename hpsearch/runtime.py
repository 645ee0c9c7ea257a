"""TensorFlow process settings: threads, GPU memory growth, mixed precision, seeds.

A trial gets one or two cores, not the machine: TensorFlow's default of one intra-op
thread per core makes two trials on two cores fight over four-plus busy threads.
These settings only take effect before TensorFlow's runtime starts, so call
:func:`configure_tensorflow` first thing in a process (or Ray actor).
"""

from __future__ import annotations

import logging
import os

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class RuntimeConfig(BaseModel):
    """The ``runtime:`` section of a job file.

    Attributes:
        intra_op_threads: Threads one TensorFlow op may use; default all cores
            (a search sets it to the trial's CPUs).
        inter_op_threads: Ops run concurrently; 1-2 suits small 2D models.
        seed: Seed of weight initialisation and batch order.
        mixed_precision: ``mixed_float16`` on GPUs (``mixed_bfloat16`` on CPUs).
        gpu_memory_growth: Allocate GPU memory as needed, so fractional-GPU trials
            can share a device instead of the first one taking it all.
        memory_limit_mb: The memory one trial may use for training (default: its share
            of the machine, total memory x its CPUs / all CPUs). A configuration whose
            estimated footprint exceeds it fails at once, as ``invalid_config``.
    """

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int | None = Field(None, ge=1, le=1024)
    inter_op_threads: int = Field(2, ge=1, le=64)
    seed: int = 0
    mixed_precision: bool = False
    gpu_memory_growth: bool = True
    memory_limit_mb: int | None = Field(None, ge=1)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter; must run before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def configure_tensorflow(config: RuntimeConfig) -> list[str]:
    """Apply thread counts, GPU memory growth and the precision policy.

    Returns:
        The names of the visible GPUs (empty on CPU-only machines).
    """
    quiet_tensorflow()
    import keras
    import tensorflow as tf

    intra = config.intra_op_threads or os.cpu_count() or 1
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(config.inter_op_threads)
    except RuntimeError:
        # The runtime already started in this process (a reused Ray actor): the
        # first configuration stays, which is the same for every trial of an actor.
        if tf.config.threading.get_intra_op_parallelism_threads() != intra:
            log.warning("TensorFlow already initialised; intra-op threads stay unchanged")
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, config.gpu_memory_growth)
        except RuntimeError:
            log.warning("TensorFlow already initialised; GPU memory growth unchanged")
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if gpus else "mixed_bfloat16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    return [gpu.name for gpu in gpus]
