"""TensorFlow process settings: threads, GPU memory (growth or a cap), mixed precision, seeds.

A trial gets one or two cores, not the machine: TensorFlow's default of one intra-op
thread per core makes two trials on two cores fight over four-plus busy threads.
These settings only take effect before TensorFlow's runtime starts, so call
:func:`configure_tensorflow` first thing in a process (or Ray actor).

A trial holding a fraction of a GPU (``gpus_per_trial: 0.5``) gets a hard cap of its
share of the device's memory: with memory growth alone, the first trial to grow can take
what its neighbours were promised, and they fail with out-of-memory errors that are not
theirs.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from hpsearch.errors import HpsearchError

log = logging.getLogger(__name__)

# Device memory each process uses outside TensorFlow's allocator (whose size the cap
# sets): the CUDA context and the cuBLAS/cuDNN handles and kernels, about 300-500 MB on
# current NVIDIA GPUs. It comes out of the trial's share, so that N trials of 1/N each
# still fit on the device together.
CUDA_CONTEXT_MB = 512
# Below this a U-Net cannot even hold its weights, optimizer slots and one batch.
MIN_TRIAL_GPU_MB = 256
GPU_MEMORY_ENV = "HPSEARCH_GPU_MEMORY_MB"


class RuntimeConfig(BaseModel):
    """The ``runtime:`` section of a job file.

    Attributes:
        intra_op_threads: Threads one TensorFlow op may use; default all cores
            (a search sets it to the trial's CPUs).
        inter_op_threads: Ops run concurrently; 1-2 suits small 2D models.
        seed: Seed of weight initialisation and batch order.
        mixed_precision: ``mixed_float16`` on GPUs (``mixed_bfloat16`` on CPUs).
        gpu_memory_growth: Allocate GPU memory as needed instead of all of it at
            start. A trial with a fraction of a GPU is capped to its share instead
            (TensorFlow allows a cap or growth on a device, not both).
        memory_limit_mb: The memory one trial may use for training (default: its share
            of the machine, total memory x its CPUs / all CPUs). A configuration whose
            estimated footprint exceeds it fails at once, as ``invalid_config``.
        loader_workers: Background processes making augmented training patches while the
            model trains (patch mode); 0 makes them in the training process.
    """

    model_config = ConfigDict(extra="forbid")

    intra_op_threads: int | None = Field(None, ge=1, le=1024)
    inter_op_threads: int = Field(2, ge=1, le=64)
    seed: int = 0
    mixed_precision: bool = False
    gpu_memory_growth: bool = True
    memory_limit_mb: int | None = Field(None, ge=1)
    loader_workers: int = Field(1, ge=0, le=64)


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter; must run before it is imported."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def gpu_memory_limit_mb(total_mb: float, fraction: float, reserve_mb: int = CUDA_CONTEXT_MB) -> int | None:
    """The TensorFlow memory cap of a trial holding ``fraction`` of a GPU of ``total_mb``.

    Returns:
        The cap in MB (the share less the CUDA context), or None for no cap: a trial
        with a whole GPU (or more, or none) does not share its devices.

    Raises:
        HpsearchError: The share leaves less than :data:`MIN_TRIAL_GPU_MB` for TensorFlow.
    """
    if not 0 < fraction < 1:
        return None
    limit = int(total_mb * fraction) - reserve_mb
    if limit < MIN_TRIAL_GPU_MB:
        raise HpsearchError(
            f"resources: gpus_per_trial: {fraction:g} of a {total_mb:.0f} MB GPU leaves {limit} MB for "
            f"TensorFlow after the CUDA context ({reserve_mb} MB); give each trial a larger share"
        )
    return limit


def gpu_total_memory_mb(index: int) -> float | None:
    """Total memory of the ``index``-th GPU this process sees, in MB; None if unknown.

    ``$HPSEARCH_GPU_MEMORY_MB`` overrides (machines without ``nvidia-smi``). TensorFlow's
    ``get_device_details`` gives no memory size, and ``nvidia-smi`` numbers devices
    ignoring ``CUDA_VISIBLE_DEVICES`` (which Ray sets per trial), hence the mapping.
    """
    if os.environ.get(GPU_MEMORY_ENV):
        try:
            return float(os.environ[GPU_MEMORY_ENV])
        except ValueError:
            raise HpsearchError(f"${GPU_MEMORY_ENV}: {os.environ[GPU_MEMORY_ENV]!r} is not a number of MB; "
                                "unset it or give the device's memory, e.g. 16384") from None
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    device = visible[index] if index < len(visible) else str(index)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        done = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", device],
                              capture_output=True, text=True, timeout=20, check=True)
        return float(done.stdout.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def trial_memory_bytes(runtime: RuntimeConfig, cpus_per_trial: float, gpus_per_trial: float = 0) -> int:
    """The memory one trial may train in: what plans patches and batches and what the fit
    check holds a configuration against.

    ``runtime.memory_limit_mb`` when set; on GPUs the trial's share of a device
    (:func:`gpu_total_memory_mb` of the first device this process sees, times
    ``gpus_per_trial``, less the CUDA context); otherwise the trial's share of this
    machine's RAM by CPUs (two 1-CPU trials on 2 cores get half each).
    """
    if runtime.memory_limit_mb:
        return runtime.memory_limit_mb * 2**20
    if gpus_per_trial > 0 and (total := gpu_total_memory_mb(0)) is not None:
        share = total * min(1.0, gpus_per_trial) - CUDA_CONTEXT_MB
        if share >= MIN_TRIAL_GPU_MB:
            return int(share * 2**20)
    import psutil

    share = cpus_per_trial / (os.cpu_count() or 1)
    return int(psutil.virtual_memory().total * min(1.0, share))


def gpu_memory_caps(
    count: int, fraction: float | None, device_memory_mb: Callable[[int], float | None]
) -> dict[int, int]:
    """GPU index -> TensorFlow memory cap in MB for ``count`` visible GPUs (logged).

    A GPU whose memory cannot be found keeps memory growth, with a warning.
    """
    if not fraction or not 0 < fraction < 1:
        return {}
    if count == 0:
        log.info("gpus_per_trial %g: no GPU visible to TensorFlow, nothing to cap", fraction)
        return {}
    caps = {}
    for index in range(count):
        total = device_memory_mb(index)
        if total is None:
            log.warning("GPU %d: its memory size is unknown (no nvidia-smi); set $%s to cap this trial "
                        "to its %g share; memory growth instead", index, GPU_MEMORY_ENV, fraction)
            continue
        caps[index] = gpu_memory_limit_mb(total, fraction)
        log.info("GPU %d: TensorFlow capped at %d MB (%g of %.0f MB, less %d MB for the CUDA context)",
                 index, caps[index], fraction, total, CUDA_CONTEXT_MB)
    return caps


def configure_tensorflow(
    config: RuntimeConfig,
    gpu_fraction: float | None = None,
    device_memory_mb: Callable[[int], float | None] = gpu_total_memory_mb,
) -> list[str]:
    """Apply thread counts, GPU memory growth or caps, and the precision policy.

    Args:
        config: The job's ``runtime`` settings.
        gpu_fraction: The trial's share of a GPU (Ray's ``GPU`` resource); below 1,
            each visible GPU is capped to it (see :func:`gpu_memory_limit_mb`).
        device_memory_mb: Total memory of the i-th visible GPU (injectable, so the
            configuration path runs on CPU-only machines too).

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
    caps = gpu_memory_caps(len(gpus), gpu_fraction, device_memory_mb)
    for index, gpu in enumerate(gpus):
        try:
            if index in caps:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=caps[index])])
            else:
                tf.config.experimental.set_memory_growth(gpu, config.gpu_memory_growth)
        except RuntimeError:
            log.warning("TensorFlow already initialised; GPU memory settings unchanged")
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16" if gpus else "mixed_bfloat16")
    else:
        keras.mixed_precision.set_global_policy("float32")
    return [gpu.name for gpu in gpus]

