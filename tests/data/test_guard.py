"""Paths judged after symlinks: what is inside a dataset folder, and why a path is unusable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpsearch.data.guard import MISSING, is_inside, not_a, refuse_inside
from hpsearch.errors import HpsearchError


@pytest.fixture
def tree(tmp_path) -> Path:
    """ds/ (the dataset, with a link out), ds2/ (a name sharing ds's prefix), out/ (links in), a loop."""
    (tmp_path / "ds" / "imagesTr").mkdir(parents=True)
    (tmp_path / "ds" / "imagesTr" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "ds2").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "to-ds").symlink_to(tmp_path / "ds")
    (tmp_path / "ds" / "to-out").symlink_to(tmp_path / "out")
    (tmp_path / "ds-link").symlink_to(tmp_path / "ds")
    (tmp_path / "loop-a").symlink_to(tmp_path / "loop-b")
    (tmp_path / "loop-b").symlink_to(tmp_path / "loop-a")
    return tmp_path


# (output path below tmp_path, dataset root below tmp_path, refused?)
CASES = [
    ("ds", "ds", True),  # the folder itself
    ("ds/preds", "ds", True),  # a new folder inside
    ("ds/imagesTr/new/deeper/x.nii.gz", "ds", True),  # nothing of it exists yet
    ("ds/imagesTr/../x.nii.gz", "ds", True),  # ".." that stays inside
    ("ds/../ds2/x.nii.gz", "ds", False),  # ".." that leaves
    ("ds2/x.nii.gz", "ds", False),  # shares the prefix "ds", not the folder
    ("out/x.nii.gz", "ds", False),
    ("out/to-ds/preds", "ds", True),  # a link from elsewhere into the dataset
    ("ds-link/preds", "ds", True),  # the dataset reached through a link
    ("out/preds", "ds-link", False),  # the dataset given as a link
    ("ds/preds", "ds-link", True),
    ("ds/to-out/x.nii.gz", "ds", False),  # lands in out/: the dataset's files are untouched
    ("loop-a/x", "ds", False),  # a loop neither raises nor counts as inside
]


@pytest.mark.parametrize("path, root, refused", CASES)
def test_refuse_inside(tree, path, root, refused):
    assert is_inside(tree / path, tree / root) is refused
    if refused:
        with pytest.raises(HpsearchError) as info:
            refuse_inside(tree / path, tree / root, "--out")
        assert str(info.value) == (
            f"--out {tree / path}: inside the dataset folder {tree / root}; hpsearch never writes there, "
            "choose another folder"
        )
    else:
        refuse_inside(tree / path, tree / root, "--out")


def test_relative_paths_are_judged_from_the_working_directory(tree, monkeypatch):
    monkeypatch.chdir(tree / "ds" / "imagesTr")
    assert is_inside("preds", tree / "ds") and is_inside(Path("../x"), "..")
    assert not is_inside("../../out", tree / "ds")


# (path below tmp_path, wanted kind, problem or None)
KINDS = [
    ("ds", "folder", None),
    ("ds/imagesTr/a.nii.gz", "file", None),
    ("ds-link", "folder", None),
    ("ds/imagesTr/a.nii.gz", "folder", "is a file, not a folder"),
    ("ds", "file", "is a folder, not a file"),
    ("nothing", "folder", MISSING),
    ("ds/imagesTr/a.nii.gz/below", "file", MISSING),
    ("loop-a", "file", "is a symlink loop"),
    ("loop-a/below", "folder", "is a symlink loop"),
    ("dangling", "file", "is a symlink to"),
]


@pytest.mark.parametrize("path, kind, problem", KINDS)
def test_not_a(tree, path, kind, problem):
    os.symlink(tree / "gone", tree / "dangling")
    found = not_a(tree / path, kind)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
