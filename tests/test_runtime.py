"""TensorFlow process settings, applied in a fresh interpreter as a trial would."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from hpsearch.errors import HpsearchError
from hpsearch.runtime import (
    CUDA_CONTEXT_MB,
    GPU_MEMORY_ENV,
    gpu_memory_caps,
    gpu_memory_limit_mb,
    gpu_total_memory_mb,
)

SCRIPT = """
import json, logging
logging.basicConfig()
from hpsearch.runtime import RuntimeConfig, configure_tensorflow
import keras, tensorflow as tf
gpus = configure_tensorflow(RuntimeConfig(intra_op_threads=1, inter_op_threads=1, mixed_precision=True))
first_policy = keras.mixed_precision.global_policy().name
tf.constant(1.0) + 1.0  # starts the runtime
# A reused actor configuring again must not fail; the first setting stays.
configure_tensorflow(RuntimeConfig(intra_op_threads=2, inter_op_threads=1))
print(json.dumps({
    "intra": tf.config.threading.get_intra_op_parallelism_threads(),
    "inter": tf.config.threading.get_inter_op_parallelism_threads(),
    "gpus": gpus,
    "first_policy": first_policy,
    "policy": keras.mixed_precision.global_policy().name,
}))
"""


def test_threads_and_precision_apply_in_a_fresh_process():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads(result.stdout.strip().splitlines()[-1])
    assert settings["intra"] == 1 and settings["inter"] == 1
    expected = "mixed_float16" if settings["gpus"] else "mixed_bfloat16"
    assert settings["first_policy"] == expected
    assert settings["policy"] == "float32"  # the second call reset the precision policy
    assert "intra-op threads stay unchanged" in result.stderr
    assert isinstance(settings["gpus"], list)


# A trial's share of a GPU: the cap, the device-memory lookup, and the path on CPU.


@pytest.mark.parametrize(("total_mb", "fraction", "expected"), [
    (16384, 0.5, 8192 - CUDA_CONTEXT_MB),   # two trials on a 16 GB card
    (24576, 0.25, 6144 - CUDA_CONTEXT_MB),  # four on an A10G (g5)
    (81920, 1 / 3, 27306 - CUDA_CONTEXT_MB),
    (16384, 1.0, None),                     # a whole GPU: not shared, no cap
    (16384, 2.0, None),
    (16384, 0.0, None),                     # a CPU trial
])
def test_gpu_memory_limit_is_the_share_less_the_cuda_context(total_mb, fraction, expected):
    assert gpu_memory_limit_mb(total_mb, fraction) == expected


def test_a_share_too_small_to_train_in_is_refused_in_one_line():
    with pytest.raises(HpsearchError, match=r"^resources: gpus_per_trial: 0.1 of a 4096 MB GPU leaves -103 MB"):
        gpu_memory_limit_mb(4096, 0.1)


def test_the_sum_of_the_caps_fits_on_the_device():
    for total in (4096, 8192, 16384, 24576, 40960, 81920):
        for trials in (2, 3, 4, 8):
            if total / trials - CUDA_CONTEXT_MB >= 256:
                assert trials * (gpu_memory_limit_mb(total, 1 / trials) + CUDA_CONTEXT_MB) <= total


def test_device_memory_from_the_environment_or_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv(GPU_MEMORY_ENV, "16384")
    assert gpu_total_memory_mb(0) == 16384.0
    monkeypatch.setenv(GPU_MEMORY_ENV, "16GB")
    with pytest.raises(HpsearchError, match=r"^\$HPSEARCH_GPU_MEMORY_MB: '16GB' is not a number of MB"):
        gpu_total_memory_mb(0)
    monkeypatch.delenv(GPU_MEMORY_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: unknown
    assert gpu_total_memory_mb(0) is None
    # A stand-in nvidia-smi (there is no GPU here) answering for the device it is asked
    # about: Ray gives a trial CUDA_VISIBLE_DEVICES=3, TensorFlow calls it GPU 0.
    smi = tmp_path / "nvidia-smi"
    smi.write_text('#!/bin/sh\necho "$@" > "${0%/*}/args"\necho 24576\n')
    smi.chmod(0o755)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert gpu_total_memory_mb(0) == 24576.0
    assert (tmp_path / "args").read_text().split() == [
        "--query-gpu=memory.total", "--format=csv,noheader,nounits", "-i", "3"]


def test_caps_per_visible_gpu_and_growth_where_the_size_is_unknown(caplog):
    caplog.set_level(logging.INFO, logger="hpsearch.runtime")
    sizes = {0: 16384.0, 1: None}
    assert gpu_memory_caps(2, 0.5, sizes.get) == {0: 8192 - CUDA_CONTEXT_MB}
    assert "GPU 0: TensorFlow capped at 7680 MB (0.5 of 16384 MB" in caplog.text
    assert "GPU 1: its memory size is unknown" in caplog.text
    assert gpu_memory_caps(2, 1.0, sizes.get) == {} and gpu_memory_caps(2, None, sizes.get) == {}


CAPPED = """
import json, logging
logging.basicConfig(level=logging.INFO)
from hpsearch.runtime import RuntimeConfig, configure_tensorflow
asked = []
gpus = configure_tensorflow(RuntimeConfig(intra_op_threads=1), gpu_fraction=0.5,
                            device_memory_mb=lambda i: asked.append(i) or 16384.0)
import tensorflow as tf
tf.constant(1.0) + 1.0  # the runtime starts with the settings applied
print(json.dumps({"gpus": gpus, "asked": asked,
                  "logical": [d.name for d in tf.config.list_logical_devices("GPU")]}))
"""


def test_a_gpu_share_configures_tensorflow_without_failing_on_cpu():
    result = subprocess.run([sys.executable, "-c", CAPPED], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    settings = json.loads(result.stdout.strip().splitlines()[-1])
    if settings["gpus"]:  # on a GPU machine: one capped logical device per GPU
        assert len(settings["logical"]) == len(settings["gpus"]) == len(settings["asked"])
        assert "TensorFlow capped at 7680 MB" in result.stderr
    else:
        assert settings["asked"] == [] and "no GPU visible to TensorFlow, nothing to cap" in result.stderr


@pytest.mark.parametrize("runtime, cpus, gpus, gpu_mb, expected_mb", [
    ({"memory_limit_mb": 3000}, 1, 0.5, "16384", 3000),          # the job's limit wins
    ({}, 1, 0.5, "16384", 16384 * 0.5 - 512),                      # half a 16 GB GPU, less the CUDA context
    ({}, 1, 1, "8192", 8192 - 512),
])
def test_trial_memory_is_the_jobs_limit_else_its_gpu_share(monkeypatch, runtime, cpus, gpus, gpu_mb, expected_mb):
    from hpsearch.runtime import RuntimeConfig, trial_memory_bytes

    monkeypatch.setenv(GPU_MEMORY_ENV, gpu_mb)
    assert trial_memory_bytes(RuntimeConfig(**runtime), cpus, gpus) == int(expected_mb * 2**20)


def test_trial_memory_on_cpus_is_the_trials_share_of_ram(monkeypatch):
    import os

    import psutil

    from hpsearch.runtime import RuntimeConfig, trial_memory_bytes

    monkeypatch.setenv(GPU_MEMORY_ENV, "16384")  # no GPU asked for: the GPU's size does not matter
    share = min(1.0, 1 / (os.cpu_count() or 1))
    assert trial_memory_bytes(RuntimeConfig(), 1, 0) == int(psutil.virtual_memory().total * share)
