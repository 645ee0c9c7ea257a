"""How much memory training a model takes, estimated before the first step.

A configuration that cannot fit (a deep U-Net with many filters and a large batch on a
trial's share of the machine) should fail in a second with a reason, not after minutes of
swapping or as an out-of-memory kill that Ray then retries. The estimate is deliberately
simple and on the generous side:

* weights: 4 bytes per parameter for the weights, their gradients, Adam's two slots, and
  the trainer's copy of the best epoch's weights (5 copies);
* activations: every layer's output for the batch, kept for the backward pass, plus as
  much again for the gradients flowing back (2 x 4 bytes per value).

Example:
    >>> model = build_model("unet", (64, 64, 1), 2, depth=2, base_filters=8)  # doctest: +SKIP
    >>> training_bytes(model, batch_size=8) / 2**20                            # doctest: +SKIP
    31.6
"""

from __future__ import annotations

import math

WEIGHT_COPIES = 5
BYTES = 4  # float32


def training_bytes(model, batch_size: int) -> int:
    """Estimated peak memory of training ``model`` on batches of ``batch_size`` (bytes)."""
    weights = model.count_params() * BYTES * WEIGHT_COPIES
    values = 0
    for layer in model.layers:
        for output in _outputs(layer):
            shape = tuple(getattr(output, "shape", ()) or ())
            values += math.prod(int(d) for d in shape[1:] if d is not None)
    return int(weights + 2 * BYTES * batch_size * values)


def _outputs(layer) -> list:
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer never called (not in the graph)
        return []
    return list(output) if isinstance(output, (list, tuple)) else [output]


class DoesNotFit(ValueError):
    """A configuration whose estimated training memory exceeds the trial's budget."""

    failure_kind = "invalid_config"  # a retry cannot make it fit (see hpsearch.failures)


def check_fits(model, batch_size: int, budget_bytes: int) -> int:
    """Raise :class:`DoesNotFit` if training ``model`` needs more than ``budget_bytes``;
    return the estimate."""
    need = training_bytes(model, batch_size)
    if need > budget_bytes:
        raise DoesNotFit(
            f"needs about {need / 2**30:.2f} GiB to train ({model.count_params():,} weights, batch_size "
            f"{batch_size}), the trial has {budget_bytes / 2**30:.2f} GiB; lower batch_size, base_filters, "
            "depth or the image size, or raise runtime.memory_limit_mb")
    return need
