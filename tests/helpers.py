"""Helpers for tests: real NIfTI datasets written with nibabel, folder snapshots, an MLflow server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil

from hpsearch.cluster.local import free_port, start_mlflow_server  # noqa: F401 (free_port: for tests)

AFFINE = np.diag([-1.5, -1.5, 4.0, 1.0]) + np.array([[0, 0, 0, 90.0], [0, 0, 0, 120], [0, 0, 0, -40], [0, 0, 0, 0]])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def write_msd(
    root: Path,
    cases: list[tuple[np.ndarray, np.ndarray]],
    labels: dict[int, str],
    modality: dict[int, str] | None = None,
    affines: list[np.ndarray] | None = None,
) -> Path:
    """An MSD-layout dataset from (image, label) arrays (with ``AFFINE`` unless ``affines``
    gives one per case)."""
    modality = modality or {0: "MRI"}
    training = []
    for i, (image, label) in enumerate(cases):
        name = f"case_{i:03d}.nii.gz"
        affine = AFFINE if affines is None else affines[i]
        write_nifti(root / "imagesTr" / name, image.astype(np.float32), affine)
        write_nifti(root / "labelsTr" / name, label.astype(np.uint8), affine)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    manifest = {
        "name": root.name,
        "modality": {str(k): v for k, v in modality.items()},
        "labels": {str(k): v for k, v in labels.items()},
        "numTraining": len(training),
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_nnunet(
    root: Path,
    cases: list[tuple[np.ndarray, np.ndarray]],
    labels: dict[str, int],
    channel_names: list[str],
) -> Path:
    """An nnU-Net v2 raw dataset: one file per channel, CASE_0000.nii.gz ..."""
    for i, (image, label) in enumerate(cases):
        for c in range(len(channel_names)):
            write_nifti(root / "imagesTr" / f"pat{i:03d}_{c:04d}.nii.gz", image[..., c].astype(np.float32))
        write_nifti(root / "labelsTr" / f"pat{i:03d}.nii.gz", label.astype(np.uint8))
    manifest = {
        "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": labels,
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def write_named_cases(
    root: Path,
    layout: str,
    train_ids: list[str],
    test_ids: list[str] = (),
    unlabelled_test_ids: list[str] = (),
    channels: int = 2,
) -> Path:
    """A tiny dataset (4x4x2 volumes, labels 0/1/2) with these case ids, in ``"msd"`` or
    ``"nnunetv2"`` layout, with labelled (``imagesTs`` + ``labelsTs``) and unlabelled test images."""
    rng = np.random.default_rng(0)

    def case(folder: str, case_id: str, labelled: bool) -> None:
        image = rng.normal(size=(4, 4, 2, channels)).astype(np.float32)
        if layout == "msd":
            write_nifti(root / f"images{folder}" / f"{case_id}.nii.gz", image)
        else:
            for c in range(channels):
                write_nifti(root / f"images{folder}" / f"{case_id}_{c:04d}.nii.gz", image[..., c])
        if labelled:
            write_nifti(root / f"labels{folder}" / f"{case_id}.nii.gz", rng.integers(0, 3, (4, 4, 2)).astype(np.uint8))

    for case_id in train_ids:
        case("Tr", case_id, True)
    for case_id in test_ids:
        case("Ts", case_id, True)
    for case_id in unlabelled_test_ids:
        case("Ts", case_id, False)
    if layout == "msd":
        manifest = {
            "modality": {str(c): f"MR{c}" for c in range(channels)},
            "labels": {"0": "background", "1": "edema", "2": "tumour"},
            "training": [{"image": f"./imagesTr/{i}.nii.gz", "label": f"./labelsTr/{i}.nii.gz"} for i in train_ids],
            # MSD lists its test images without labels.
            "test": [f"./imagesTs/{i}.nii.gz" for i in (*test_ids, *unlabelled_test_ids)],
        }
    else:
        manifest = {
            "channel_names": {str(c): f"MR{c}" for c in range(channels)},
            "labels": {"background": 0, "edema": 1, "tumour": 2},
            "numTraining": len(train_ids),
            "file_ending": ".nii.gz",
        }
    (root / "dataset.json").write_text(json.dumps(manifest, indent=2))
    return root


def tissue_case(rng: np.random.Generator, shape=(197, 233, 5)) -> tuple[np.ndarray, np.ndarray]:
    """A brain-MRI-like slab of odd in-plane size: float intensities, three tissue classes."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    radius = np.sqrt(x**2 + (y * 1.1) ** 2)[..., None] + rng.normal(0, 0.01, shape)
    label = np.select([radius < 0.35, radius < 0.6, radius < 0.85], [3, 2, 1], 0)
    image = np.choose(label, [0.0, 310.5, 520.25, 790.75]) * rng.uniform(0.9, 1.1)
    image = image + rng.normal(0, 25, shape) * (label > 0)
    return image.astype(np.float32), label.astype(np.uint8)


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file below root with its size and mtime: proof that nothing was written."""
    # lstat: a symlink is recorded as itself (a loop or a link out must not break the snapshot).
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def predict(model, x):
    """A direct model call: skips predict()'s per-model tf.function tracing, faster in tests."""
    return np.asarray(model(x, training=False))


def assert_safe_mode_round_trip(model, path: Path, seed: int = 0) -> None:
    """Save as .keras, reload with safe_mode=True, and compare outputs on random input."""
    import keras

    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    x = np.random.default_rng(seed).normal(size=(2, *model.input_shape[1:])).astype("float32")
    np.testing.assert_allclose(predict(loaded, x), predict(model, x), rtol=1e-6, atol=1e-6)


def start_server(folder: Path, port: int, backend_uri: str | None = None) -> subprocess.Popen:
    """A real ``mlflow server`` on 127.0.0.1 (default store: ``folder/server.db``)."""
    return start_mlflow_server(backend_uri or f"sqlite:///{folder}/server.db", folder / "artifacts", port=port)


def stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGKILL)  # a crash, not a shutdown
    except ProcessLookupError:  # already stopped (a test's earlier stop, then a failed restart)
        pass
    server.wait(timeout=10)


SPAWN_TAG = "HPSEARCH_TEST_SPAWN"


def tagged_processes(tag: str) -> list[psutil.Process]:
    """Live processes whose environment carries ``SPAWN_TAG=tag`` (see the ``spawn`` fixture),
    and their descendants: Ray's agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``)
    overwrite their environment when they rename themselves, so only their parent, a tagged
    raylet, leads to them."""
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(SPAWN_TAG) == tag:
                found[proc.pid] = proc
                found.update((child.pid, child) for child in proc.children(recursive=True))
        except psutil.Error:  # gone, or another user's
            continue
    return list(found.values())


def alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` still running (zombies are dead: only their exit status is left)."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def kill_processes(procs: list[psutil.Process]) -> None:
    """SIGKILL every process and wait for them (teardown: nothing may survive a test)."""
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def hpsearch_process(spawn, *args, cwd: Path) -> subprocess.Popen:
    """A real `hpsearch` process (own session, output merged, local Ray); the ``spawn``
    fixture kills it and everything it started if the test fails."""
    exe = Path(sys.executable).with_name("hpsearch")
    return spawn(
        [exe, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True, env={**os.environ, "RAY_ADDRESS": ""},
    )
