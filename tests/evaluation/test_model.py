"""A model on a dataset's cases: real (tiny) training and export, real predictions on disk."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from helpers import snapshot, write_nifti

from hpsearch.cli import main
from hpsearch.data import DatasetConfig, load_dataset, read_index
from hpsearch.errors import HpsearchError
from hpsearch.evaluation import evaluate_folders, evaluate_model, labelled_cases
from hpsearch.export import META_FILE, export_model
from hpsearch.trainer import Trainer

REGIONS = {"whole_tumour": [1, 2, 4], "tumour_core": [1, 4]}


@pytest.fixture(scope="module")
def brats_model(brats_small, tmp_path_factory):
    """One epoch on 4 synthetic BraTS cases: good enough to write real label maps."""
    data, _ = load_dataset(DatasetConfig(path=brats_small, image_size=(32, 32), val_fraction=0.25))
    trainer = Trainer(data, "unet", {"depth": 2, "base_filters": 4, "epochs": 1, "batch_size": 8})
    trainer.fit()
    root = tmp_path_factory.mktemp("eval-model")
    return export_model(trainer.save(root / "ckpt"), root / "model", data_info=data.info)


def test_report_equals_evaluate_folders_on_the_written_predictions(brats_small, brats_model, tmp_path):
    index = read_index(brats_small)
    before = snapshot(brats_small)
    report = evaluate_model(brats_model, index.cases, tmp_path / "pred", regions=REGIONS, dataset_root=brats_small)
    written = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert written == sorted(f"{c.case_id}.nii.gz" for c in index.cases)
    assert report == evaluate_folders(tmp_path / "pred", brats_small, split="train", regions=REGIONS)
    assert report.label_values == (0, 1, 2, 4) and report.class_names == tuple(index.class_names)
    assert {"test_dice", "test_hd95_whole_tumour", "test_iou_tumour_core"} <= set(report.metrics())
    first = nib.load(tmp_path / "pred" / written[0])
    label = nib.load(index.cases[0].label)
    assert first.shape == label.shape and np.allclose(first.affine, label.affine)
    assert set(np.unique(np.asarray(first.dataobj))) <= {0, 1, 2, 4}
    assert snapshot(brats_small) == before  # nothing written into the dataset


def test_channel_files_score_like_4d_images(brats_small, brats_model, tmp_path):
    """nnU-Net's CASE_0000.nii.gz... and MSD's 4D file of the same voxels: the same report."""
    index = read_index(brats_small)
    nnunet = tmp_path / "nnunet"
    for case in index.cases:  # the same voxels and affine, one file per channel
        image, label = nib.load(case.images[0]), nib.load(case.label)
        for c in range(image.shape[3]):
            write_nifti(nnunet / "imagesTr" / f"{case.case_id}_{c:04d}.nii.gz", image.dataobj[..., c], image.affine)
        write_nifti(nnunet / "labelsTr" / f"{case.case_id}.nii.gz", np.asarray(label.dataobj), label.affine)
    manifest = {"channel_names": dict(enumerate(index.channel_names)), "file_ending": ".nii.gz",
                "labels": dict(zip(index.class_names, index.label_values))}
    (nnunet / "dataset.json").write_text(json.dumps(manifest))
    assert len(read_index(nnunet).cases[0].images) == 4
    msd = evaluate_model(brats_model, index.cases, tmp_path / "msd-pred")
    per_channel = evaluate_model(brats_model, read_index(nnunet).cases, tmp_path / "nnunet-pred")
    assert [c.scores for c in per_channel.cases] == [c.scores for c in msd.cases]


def test_regions_default_to_the_exports(brats_small, brats_model, tmp_path):
    model = shutil.copytree(brats_model, tmp_path / "model")
    meta = json.loads((model / META_FILE).read_text())
    (model / META_FILE).write_text(json.dumps({**meta, "regions": REGIONS}))
    cases = read_index(brats_small).cases[:1]
    assert evaluate_model(model, cases, tmp_path / "a").regions == {"whole_tumour": (1, 2, 4), "tumour_core": (1, 4)}
    assert evaluate_model(model, cases, tmp_path / "b", regions={"wt": [1, 2, 4]}).regions == {"wt": (1, 2, 4)}


def test_refusals(brats_small, brats_model, tmp_path):
    index = read_index(brats_small)
    with pytest.raises(HpsearchError, match="inside the dataset folder"):
        evaluate_model(brats_model, index.cases, brats_small / "pred", dataset_root=brats_small)
    with pytest.raises(HpsearchError, match="inside the dataset folder"):  # the cases' own folders, without a root
        evaluate_model(brats_model, index.cases, brats_small / "imagesTr" / "pred")
    out = tmp_path / "pred"
    evaluate_model(brats_model, index.cases[:1], out)
    stamp = (out / f"{index.cases[0].case_id}.nii.gz").stat().st_mtime_ns
    with pytest.raises(HpsearchError, match="already exists"):
        evaluate_model(brats_model, index.cases[:1], out)
    assert (out / f"{index.cases[0].case_id}.nii.gz").stat().st_mtime_ns == stamp


def test_test_split_is_the_labelled_test_cases(brats_small):
    index = read_index(brats_small)
    assert labelled_cases(dataclasses.replace(index, test_cases=index.cases[:1]), "test") == index.cases[:1]
    assert labelled_cases(index, "train") == index.cases
    with pytest.raises(HpsearchError, match="--split train"):
        labelled_cases(dataclasses.replace(index, test_cases=()), "test")


def test_cli_model_mode(brats_small, brats_model, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(brats_model), str(brats_small), "--out", str(out), "--split", "train",
                 "--regions", "whole_tumour=1,2,4"]) == 0
    printed = capsys.readouterr().out
    assert "whole_tumour (1+2+4)" in printed and "over 4 case(s)" in printed
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved == json.loads(json.dumps(evaluate_folders(out, brats_small, split="train",
                                                           regions={"whole_tumour": [1, 2, 4]}).to_dict()))
    # --out is required, and must be new or empty: one line, exit 2.
    for args, expected in ((["--split", "train"], "give --out"),
                           (["--split", "train", "--out", str(out)], "already exists and is not empty")):
        assert main(["evaluate", str(brats_model), str(brats_small), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0]


def test_cli_default_split_is_the_labelled_test_cases(brats_small, brats_model, tmp_path, capsys):
    dataset = shutil.copytree(brats_small, tmp_path / "brats")
    for case in read_index(dataset).cases[:2]:  # copies of two cases, under new ids, become test cases
        for folder, path in (("imagesTs", case.images[0]), ("labelsTs", case.label)):
            (dataset / folder).mkdir(exist_ok=True)
            shutil.copy(path, dataset / folder / f"test_{path.name}")
    test_ids = [c.case_id for c in read_index(dataset).test_cases]
    assert len(test_ids) == 2
    out = tmp_path / "eval"
    assert main(["evaluate", str(brats_model), str(dataset), "--out", str(out)]) == 0
    assert "over 2 case(s)" in capsys.readouterr().out
    saved = json.loads((out / "evaluation.json").read_text())
    assert [c["case"] for c in saved["cases"]] == test_ids
    # The same predictions scored in prediction mode against the dataset's test labels: the same numbers.
    assert main(["evaluate", str(out), str(dataset), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "evaluation.json").read_text()) == saved
