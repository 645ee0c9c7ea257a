"""TensorFlow process settings, applied in a fresh interpreter as a trial would."""

from __future__ import annotations

import json
import subprocess
import sys

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
