"""The preprocessing cache: hits, keys, concurrent writers, and the dataset left alone."""

from __future__ import annotations

import multiprocessing
import shutil

import nibabel as nib
import numpy as np
import pytest
from helpers import snapshot

from hpsearch.data import PreprocessConfig, dataset_digest, prepare_cached, read_index
from hpsearch.errors import HpsearchError

CONFIG = PreprocessConfig(image_size=(32, 32), val_fraction=0.25)


def test_second_call_is_a_memory_mapped_hit(lv_small, tmp_path):
    index = read_index(lv_small)
    before = snapshot(lv_small)
    first, hit1 = prepare_cached(index, CONFIG, tmp_path)
    second, hit2 = prepare_cached(index, CONFIG, tmp_path)
    assert (hit1, hit2) == (False, True)
    assert isinstance(second.train_x, np.memmap)
    np.testing.assert_array_equal(first.train_x, second.train_x)
    assert second.info == first.info
    assert snapshot(lv_small) == before
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def test_key_follows_settings_and_content_not_folder_name(lv_small, tmp_path):
    cache = tmp_path / "cache"
    prepare_cached(read_index(lv_small), CONFIG, cache)
    _, hit = prepare_cached(read_index(lv_small), CONFIG.model_copy(update={"image_size": (16, 16)}), cache)
    assert not hit
    copy = shutil.copytree(lv_small, tmp_path / "renamed")
    _, hit = prepare_cached(read_index(copy), CONFIG, cache)
    assert hit, "same content in another folder should reuse the entry"
    label = copy / "labelsTr" / "lv_000.nii.gz"
    img = nib.load(label)
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 1 - data[0, 0, 0]
    nib.save(nib.Nifti1Image(data, img.affine, img.header), label)
    _, hit = prepare_cached(read_index(copy), CONFIG, cache)
    assert not hit, "an edited label file must not be served from the cache"


def _worker(args):
    root, cache = args
    data, hit = prepare_cached(read_index(root), CONFIG, cache)
    return hit, float(np.asarray(data.train_x).sum())


def test_concurrent_processes_build_once_and_agree(lv_small, tmp_path):
    with multiprocessing.get_context("spawn").Pool(3) as pool:
        results = pool.map(_worker, [(lv_small, tmp_path)] * 3)
    assert sum(not hit for hit, _ in results) == 1, results
    assert len({total for _, total in results}) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == [], leftovers


def test_cache_inside_dataset_is_refused(lv_small):
    with pytest.raises(HpsearchError, match="never writes there"):
        prepare_cached(read_index(lv_small), CONFIG, lv_small / "cache")


def test_file_digests_are_memoised_by_size_and_mtime(lv_small, tmp_path):
    index = read_index(lv_small)
    memo: dict[str, str] = {}
    first = dataset_digest(index, memo)
    assert len(memo) == 1 + 2 * 8  # dataset.json + image and label of 8 cases
    # The memo is trusted while size and mtime are unchanged: a planted digest shows up.
    planted = {key: "0" * 64 for key in memo}
    assert dataset_digest(index, planted) != first
    assert dataset_digest(index, {}) == first
    prepare_cached(index, CONFIG, tmp_path)
    assert (tmp_path / "file-digests.json").is_file()


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bytes(path):
    """Same size, same header: only bytes of the array data change (what bit rot does)."""
    raw = bytearray(path.read_bytes())
    for i in range(len(raw) - 64, len(raw) - 32):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _garble(path):
    path.write_bytes(b"#" * path.stat().st_size)


@pytest.mark.parametrize(
    "file, damage, problem",
    [
        ("train_x.npy", _truncate, "train_x.npy has"),  # numpy: "mmap length is greater than file size"
        ("val_case.npy", _truncate, "val_case.npy has"),
        ("train_x.npy", _flip_bytes, "train_x.npy differs from the checksum"),  # silently used before
        ("val_y.npy", _flip_bytes, "val_y.npy differs from the checksum"),
        ("info.json", _garble, "info.json differs from the checksum"),
        ("checksums.json", lambda path: path.unlink(), "checksums.json is missing"),
        ("val_x.npy", lambda path: path.unlink(), "val_x.npy is missing"),
    ],
)
def test_damaged_entry_is_rebuilt_with_one_warning(lv_small, tmp_path, capsys, file, damage, problem):
    index = read_index(lv_small)
    first, _ = prepare_cached(index, CONFIG, tmp_path)
    expected = {name: np.array(getattr(first, name)) for name in first.ARRAYS}  # copies, not maps of the file
    del first
    [entry] = [p for p in tmp_path.glob("prepared-*") if p.is_dir()]
    damage(entry / file)
    capsys.readouterr()
    data, hit = prepare_cached(index, CONFIG, tmp_path)
    assert not hit
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"warning: cache entry {entry}: {problem}") and "rebuilding it" in warning, warning
    assert "\n" not in warning
    for name, array in expected.items():
        np.testing.assert_array_equal(getattr(data, name), array)
    assert isinstance(data.train_x, np.memmap)
    again, hit = prepare_cached(index, CONFIG, tmp_path)
    assert hit and capsys.readouterr().err == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # the damaged entry is gone
