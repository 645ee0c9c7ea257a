"""Exporting a trained configuration as a self-contained model folder.

An export is what users segment new scans with (:mod:`hpsearch.predict`), long after
the search, its checkpoints and maybe its dataset are gone. So the folder holds
everything prediction needs and nothing it must not trust:

* ``model.keras``: the network with the weights of its best-Dice epoch, built from
  built-in Keras layers only, so it loads with ``safe_mode=True`` (no pickled code);
* ``hpsearch-model.json``: the model family and hyperparameters, the exact
  preprocessing (slice mode: slice axis, in-plane size, resize and normalisation modes;
  patch mode: the plan with target spacing, patch size and dims, the normalisation and
  its intensity statistics, and how to slide windows), the channel names, class names
  and *original* label values (BraTS 0, 1, 2, 4), the validation Dice, and provenance (dataset folder and digest, time, hpsearch version,
  and any ``extra`` such as MLflow run ids). Prediction refuses to write into the
  dataset folder named there.

The k fold models of a cross-validated configuration export as one ensemble folder
(:mod:`hpsearch.ensemble`), written with the same helpers (:func:`write_export`,
:func:`save_verified`, :func:`export_meta`).

Example:
    >>> from hpsearch.export import export_model
    >>> export_model(Path("state/"), Path("lv-model/"), data_info=data.info,  # doctest: +SKIP
    ...              extra={"mlflow": {"run_id": "3f2a..."}})
    PosixPath('lv-model')
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from hpsearch.errors import HpsearchError
from hpsearch.network import input_shape

if TYPE_CHECKING:
    import keras

# Keras, the models and the trainer (TensorFlow, and its start-up lines on stderr) are
# imported inside the functions: `predict` and `export` read this module's constants and
# check their inputs before paying for TensorFlow.

EXPORT_FORMAT = 1  # patch-mode exports add keys (plan, volume_config, ...); slice-mode ones are unchanged
MODEL_FILE = "model.keras"
META_FILE = "hpsearch-model.json"


def export_model(
    checkpoint_dir: Path, out_dir: Path, *, data_info: dict, extra: dict | None = None
) -> Path:
    """Write the best-Dice weights of a trainer checkpoint as an exported model folder.

    Args:
        checkpoint_dir: A folder written by :meth:`hpsearch.trainer.Trainer.save`.
        out_dir: The export folder; must not exist or be empty. Written complete or
            not at all (built in a hidden sibling folder, then renamed).
        data_info: ``PreparedData.info`` of the data the checkpoint was trained on:
            channels, classes, label values and preprocessing settings.
        extra: More JSON-friendly metadata stored at the top level of
            ``hpsearch-model.json`` (e.g. ``{"mlflow": {...}, "trial_id": "..."}``).

    Returns:
        ``out_dir``.

    Raises:
        HpsearchError: Incomplete checkpoint, non-empty ``out_dir``, a checkpoint that
            does not fit ``data_info``, or a saved model that does not reload.

    Example:
        >>> export_model(Path("ckpt"), Path("model"), data_info=data.info)  # doctest: +SKIP
        PosixPath('model')
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    state = read_checkpoint_state(checkpoint_dir, data_info)
    check_out_dir(out_dir)
    model, params = model_from_checkpoint(checkpoint_dir, state, data_info)
    meta = merge_extra(export_meta(state, params, data_info), extra)
    return write_export(out_dir, meta, lambda folder: save_verified(model, folder / MODEL_FILE, input_shape(data_info)))


def read_checkpoint_state(checkpoint_dir: Path, data_info: dict) -> dict:
    """The ``trainer_state.json`` of a complete checkpoint trained on the data ``data_info`` describes.

    Raises:
        HpsearchError: No state or best weights, unreadable state, or another dataset digest.
    """
    from hpsearch.trainer import BEST_WEIGHTS_FILE, STATE_FILE

    state_file = checkpoint_dir / STATE_FILE
    if not state_file.is_file() or not (checkpoint_dir / BEST_WEIGHTS_FILE).is_file():
        raise HpsearchError(
            f"{checkpoint_dir}: no {STATE_FILE} or {BEST_WEIGHTS_FILE}; not a complete trainer checkpoint"
        )
    try:
        state = json.loads(state_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HpsearchError(f"{state_file}: not readable JSON ({exc})") from None
    # The digest identifies the dataset's content: a mismatch means data_info (and so the
    # label values and channels written below) may not be what the model learned.
    trained_on, described = state.get("data_digest") or "", data_info.get("digest") or ""
    if trained_on and described and trained_on != described:
        raise HpsearchError(
            f"{checkpoint_dir}: trained on dataset digest {trained_on[:12]}..., but data_info "
            f"describes {described[:12]}...; pass the info of the data it was trained on"
        )
    return state


def check_out_dir(out_dir: Path) -> None:
    """Refuse an export folder that exists and is not empty (nothing is overwritten)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise HpsearchError(f"{out_dir}: already exists and is not empty; choose another export folder")


def export_meta(state: dict, params: Any, data_info: dict) -> dict[str, Any]:
    """The ``hpsearch-model.json`` of one checkpoint, before ``extra`` (see the module docstring)."""
    return {
        "format_version": EXPORT_FORMAT,
        "model": state["model"],
        "hyperparameters": params.model_dump(mode="json"),
        **shared_settings(data_info),
        "input_shape": list(input_shape(data_info)),
        "best_val_dice": state.get("best_val_dice"),
        "best_epoch": state.get("best_epoch"),
        "epochs_trained": state.get("epoch"),
        "dataset_digest": state.get("data_digest") or data_info.get("digest") or "",
        "dataset": data_info.get("dataset"),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hpsearch_version": _version(),
    }


def shared_settings(data_info: dict) -> dict[str, Any]:
    """What a scan must be fed and mapped back with: channels, classes, label values and
    the preprocessing (models averaged into an ensemble must agree on all of it)."""
    return {
        "channel_names": list(data_info["channel_names"]),
        "class_names": list(data_info["class_names"]),
        "label_values": [int(v) for v in data_info["label_values"]],
        **_preprocessing(data_info),
    }


def merge_extra(meta: dict[str, Any], extra: dict | None) -> dict[str, Any]:
    """``meta`` with the caller's ``extra`` keys added at the top level.

    Raises:
        ValueError: An ``extra`` key would replace one of the export's own.
    """
    clash = sorted(set(extra or {}) & set(meta))
    if clash:  # a caller's bug: extra must not silently replace what prediction relies on
        raise ValueError(f"extra keys {clash} clash with the export's own metadata")
    return {**meta, **(extra or {})}


def write_export(out_dir: Path, meta: dict[str, Any], save: Callable[[Path], None]) -> Path:
    """Write an export folder complete or not at all: ``save(folder)`` writes the model
    file(s) and ``meta`` goes to ``hpsearch-model.json``, in a hidden sibling folder that is
    renamed to ``out_dir`` (which must not exist or be empty) at the end."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        save(partial)
        # default=str: extra may carry Paths or datetimes from a fingerprint or tracker.
        (partial / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); rename cannot replace a folder portably
        os.replace(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return out_dir


def save_verified(model: keras.Model, path: Path, shape: tuple[int, ...]) -> None:
    """Save ``model`` (never compiled: no optimizer state inside) and check it reloads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    _verify_reload(model, path, shape)


def model_from_checkpoint(checkpoint_dir: Path, state: dict, data_info: dict) -> tuple[keras.Model, Any]:
    """The network of a trainer checkpoint with its best-Dice weights, in float32.

    Args:
        checkpoint_dir: A folder written by :meth:`hpsearch.trainer.Trainer.save`.
        state: Its ``trainer_state.json``, read.
        data_info: ``PreparedData.info`` of the data it was trained on.

    Returns:
        The model and its validated hyperparameters.

    Raises:
        HpsearchError: The weights do not fit the model ``data_info`` describes.
    """
    import keras

    from hpsearch.network import build_network
    from hpsearch.params import model_options, validate_params
    from hpsearch.trainer import BEST_WEIGHTS_FILE, load_arrays

    params = validate_params(state["model"], state["params"])
    shape, num_classes = input_shape(data_info), len(data_info["label_values"])
    # Built in float32 even in a mixed-precision process: users predict on any CPU, where
    # float16 compute is slow or unsupported. The checkpoint's variables are float32 anyway.
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = build_network(state["model"], model_options(params), data_info)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    weights = load_arrays(checkpoint_dir / BEST_WEIGHTS_FILE)
    expected = [tuple(w.shape) for w in model.weights]
    if [tuple(w.shape) for w in weights] != expected:
        raise HpsearchError(
            f"{checkpoint_dir / BEST_WEIGHTS_FILE}: weights do not fit a {state['model']} for input "
            f"{shape} and {num_classes} classes; is data_info the training data's?"
        )
    model.set_weights(weights)
    return model, params


def _preprocessing(data_info: dict) -> dict[str, Any]:
    """What prediction must repeat: the slice settings, or the plan and patch-mode settings."""
    from hpsearch.segment import OVERLAP

    if not data_info.get("plan"):
        return {"preprocess": dict(data_info["preprocess"])}
    return {
        "plan": dict(data_info["plan"]),
        "volume_config": dict(data_info["volume_config"]),
        "sampling": dict(data_info.get("sampling") or {}),
        "intensity": dict(data_info.get("intensity") or {}),
        "inference": {"overlap": OVERLAP, "mirror": False},
    }


def _verify_reload(model: keras.Model, path: Path, shape: tuple[int, ...]) -> None:
    """Reload as a user would and check the output, so a broken export never ships."""
    import keras

    try:
        reloaded = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for unloadable files
        raise HpsearchError(
            f"{path}: the saved model does not reload with safe_mode=True ({type(exc).__name__}: {exc})"
        ) from None
    zeros = np.zeros((1, *shape), np.float32)
    expected = np.asarray(model(zeros, training=False))
    got = np.asarray(reloaded(zeros, training=False))
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise HpsearchError(f"{path}: the reloaded model predicts differently from the trained one")


def _version() -> str:
    import hpsearch

    version = getattr(hpsearch, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("hpsearch")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"
