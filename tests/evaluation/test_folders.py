"""Folders of real NIfTI files: pairing, geometry from the header, one-line errors, the CLI."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from helpers import write_msd, write_nifti

from hpsearch.cli import main
from hpsearch.errors import HpsearchError
from hpsearch.evaluation import evaluate_folders
from hpsearch.evaluation.command import parse_regions

# 0.8 x 1.25 x 4 mm voxels, oblique-free but not unit: HD95 must come out in mm from here.
AFFINE = np.diag([0.8, 1.25, 4.0, 1.0])
AFFINE[:3, 3] = [-10.0, 20.0, 5.0]


def _truth(shift=0):
    label = np.zeros((20, 16, 8), np.uint8)
    label[4:12, 4:12, 2:6] = 2
    label[6 + shift : 10 + shift, 6:10, 3:5] = 1
    return label


def _write_pair(pred_dir, label_dir, case, pred, truth, pred_affine=AFFINE):
    write_nifti(label_dir / f"{case}.nii.gz", truth, AFFINE)
    write_nifti(pred_dir / f"{case}.nii.gz", pred, pred_affine)


@pytest.fixture
def folders(tmp_path):
    pred_dir, label_dir = tmp_path / "pred", tmp_path / "labels"
    _write_pair(pred_dir, label_dir, "b", _truth(), _truth())
    _write_pair(pred_dir, label_dir, "a", _truth(shift=2), _truth())  # class 1 moved 2 voxels along x
    return pred_dir, label_dir


def test_plain_folders_score_in_header_spacing(folders):
    report = evaluate_folders(*folders)
    assert report.label_values == (0, 1, 2) and report.class_names == ("background", "label_1", "label_2")
    assert [c.case_id for c in report.cases] == ["a", "b"]
    a, b = (c.scores for c in report.cases)
    assert b["label_1"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}
    assert a["label_1"]["dice"] == pytest.approx(0.5)  # 2 of 4 rows overlap
    assert a["label_1"]["hd95"] == pytest.approx(2 * 0.8)  # 2 voxels of 0.8 mm


def test_declared_values_and_regions(folders):
    report = evaluate_folders(*folders, label_values=[0, 1, 2], class_names=["bg", "core", "oedema"],
                              regions={"tumour": [1, 2]})
    assert report.names == ["core", "oedema", "tumour"]
    assert report.cases[0].scores["tumour"] == {"dice": 1.0, "iou": 1.0, "hd95": 0.0}  # the union did not move


def test_dataset_folder_gives_the_declaration(tmp_path):
    cases = [(np.ones((20, 16, 8)), _truth()), (np.ones((20, 16, 8)), _truth(shift=2))]
    dataset = write_msd(tmp_path / "ds", cases, {0: "background", 1: "core", 2: "oedema"}, affines=[AFFINE] * 2)
    pred_dir = tmp_path / "pred"
    for i in range(2):
        write_nifti(pred_dir / f"case_{i:03d}.nii.gz", _truth(), AFFINE)
    report = evaluate_folders(pred_dir, dataset, split="train")
    assert report.class_names == ("background", "core", "oedema")
    assert report.cases[1].scores["core"]["hd95"] == pytest.approx(2 * 0.8)
    with pytest.raises(HpsearchError, match="no labelled test cases .*--split train"):
        evaluate_folders(pred_dir, dataset)  # the default split is the test split


def _one_line_error(call, *expected):
    with pytest.raises(HpsearchError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for part in expected:
        assert part in message
    return message


def test_missing_prediction_names_the_case(folders):
    pred_dir, label_dir = folders
    (pred_dir / "a.nii.gz").unlink()
    _one_line_error(lambda: evaluate_folders(pred_dir, label_dir), "no prediction a.nii.gz", "hpsearch predict")


def test_shape_mismatch(folders):
    pred_dir, label_dir = folders
    write_nifti(pred_dir / "a.nii.gz", np.zeros((20, 16, 7), np.uint8), AFFINE)
    _one_line_error(lambda: evaluate_folders(pred_dir, label_dir), "a.nii.gz", "shape (20, 16, 7)", "voxel grid")


def test_affine_mismatch(folders):
    pred_dir, label_dir = folders
    moved = AFFINE.copy()
    moved[0, 3] += 0.5
    write_nifti(pred_dir / "a.nii.gz", _truth(), moved)
    _one_line_error(lambda: evaluate_folders(pred_dir, label_dir), "a.nii.gz", "affine differs")


def test_a_value_outside_the_declaration(folders):
    pred_dir, label_dir = folders
    write_nifti(pred_dir / "a.nii.gz", np.full((20, 16, 8), 5, np.uint8), AFFINE)
    _one_line_error(lambda: evaluate_folders(pred_dir, label_dir, label_values=[0, 1, 2]),
                    "a.nii.gz", "label value(s) [5] not in label_values [0, 1, 2]")


def test_unreadable_prediction(folders):
    pred_dir, label_dir = folders
    (pred_dir / "a.nii.gz").write_bytes(b"not a nifti")
    _one_line_error(lambda: evaluate_folders(pred_dir, label_dir), "a.nii.gz", "not a readable NIfTI")


def test_cli_writes_csv_and_json(folders, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", *map(str, folders), "--out", str(out), "--regions", "tumour=1,2"]) == 0
    printed = capsys.readouterr().out
    assert "tumour (1+2)" in printed and "mean foreground Dice" in printed and f"wrote {out / 'evaluation.csv'}" in printed
    rows = list(csv.DictReader((out / "evaluation.csv").open()))
    assert [r["case"] for r in rows] == ["a", "b"] and float(rows[0]["label_1_hd95"]) == pytest.approx(1.6)
    summary = json.loads((out / "evaluation.json").read_text())
    assert summary["regions"] == {"tumour": [1, 2]} and summary["summary"]["num_cases"] == 2


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--regions", "tumour=1,x"], "--regions: 'tumour=1,x' is not NAME=V1,V2"),
        (["--regions", "tumour=1,9"], "region 'tumour' names label value(s) [9]"),
        (["--mirror"], "--mirror applies to a model only"),
        (["--split", "train"], "--split applies to a dataset only"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(folders, capsys, args, expected):
    assert main(["evaluate", *map(str, folders), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_cli_missing_prediction_and_output_inside_labels(folders, capsys):
    pred_dir, label_dir = folders
    assert main(["evaluate", str(pred_dir), str(label_dir), "--out", str(label_dir / "eval")]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
    assert not (label_dir / "eval").exists()
    (pred_dir / "b.nii.gz").unlink()
    assert main(["evaluate", str(pred_dir), str(label_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no prediction b.nii.gz" in err[0]


def test_cli_never_overwrites_an_evaluation(folders, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", *map(str, folders), "--out", str(out)]) == 0
    before = (out / "evaluation.csv").read_text()
    assert main(["evaluate", *map(str, folders), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "evaluation.csv").read_text() == before


def test_parse_regions():
    assert parse_regions(["wt=1,2,4", "tc=1,4"]) == {"wt": [1, 2, 4], "tc": [1, 4]}
    with pytest.raises(HpsearchError, match="given twice"):
        parse_regions(["wt=1", "wt=2"])


def test_cli_one_folder_is_an_experiment(folders, capsys):
    """`hpsearch evaluate EXPERIMENT` (the search's last step) refuses what is not one, in one line."""
    pred_dir, _ = folders
    assert main(["evaluate", str(pred_dir), "--regions", "tumour=1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--regions need(s) a second folder" in err[0]
    assert main(["evaluate", str(pred_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(pred_dir) in err[0]
