"""Splits a user controls: patient-grouped folds, the locked test split, nnU-Net's splits_final.json.

Every dataset here is a real folder of NIfTI files (tiny volumes: splits read case ids only).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from batchgenerators.utilities.file_and_folder_operations import save_json
from helpers import snapshot, write_named_cases

from hpsearch.cli import main
from hpsearch.data import (
    DatasetConfig,
    Fold,
    Splits,
    make_splits,
    read_index,
    read_nnunet_splits,
    split_cases,
    write_nnunet_splits,
)
from hpsearch.data.cache import cache_key
from hpsearch.errors import HpsearchError

# 13 patients with 1 to 4 scans each: 29 cases whose ids carry the patient ("p07_s2").
SCANS = [1, 2, 3, 1, 4, 2, 1, 3, 2, 1, 4, 3, 2]
IDS = [f"p{p:02d}_s{s}" for p, n in enumerate(SCANS) for s in range(n)]


def patient(case_id: str) -> str:
    return case_id.split("_")[0]


def patients(cases) -> set[str]:
    return {patient(c) for c in cases}


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """The 29 cases in MSD layout, no test folders."""
    return write_named_cases(tmp_path_factory.mktemp("data") / "grouped", "msd", IDS, channels=1)


def config(root, **keys) -> DatasetConfig:
    return DatasetConfig(path=root, **keys)


def groups_json(tmp_path, ids=IDS):
    path = tmp_path / "groups.json"
    path.write_text(json.dumps({c: patient(c) for c in ids}))
    return {"groups_file": path}


def groups_csv(tmp_path, ids=IDS):
    path = tmp_path / "groups.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "group"])
        writer.writerows([c, patient(c)] for c in ids)
    return {"groups_file": path}


GROUPINGS = {
    "capture group": lambda tmp_path: {"group_pattern": r"^(p\d+)_"},
    "whole match": lambda tmp_path: {"group_pattern": r"p\d\d"},
    "json file": groups_json,
    "csv file": groups_csv,
}


def assert_grouped(splits: Splits, all_ids) -> None:
    """A patient never on two sides; the splits cover every case once."""
    assert set(splits.pool) | set(splits.test) == set(all_ids)
    assert not set(splits.pool) & set(splits.test)
    assert not patients(splits.pool) & patients(splits.test)
    for fold in splits.folds:
        assert set(fold.train) | set(fold.val) == set(splits.pool)
        assert not patients(fold.train) & patients(fold.val), fold
        assert list(fold.train) == sorted(fold.train) and list(fold.val) == sorted(fold.val)


@pytest.mark.parametrize("grouping", GROUPINGS)
@pytest.mark.parametrize("folds", [None, 2, 3, 5, 10])
@pytest.mark.parametrize("test_fraction", [None, 0.2])
def test_a_patient_is_on_one_side_of_every_split(grouped, tmp_path, grouping, folds, test_fraction):
    splits = make_splits(read_index(grouped), config(grouped, folds=folds, test_fraction=test_fraction,
                                                     **GROUPINGS[grouping](tmp_path)))
    assert_grouped(splits, IDS)
    assert len(splits.folds) == (folds or 1)
    if folds:  # k-fold: every pool case validated exactly once
        vals = [c for f in splits.folds for c in f.val]
        assert sorted(vals) == sorted(splits.pool)
    if test_fraction:
        assert splits.test_source == "test_fraction"
        assert len(patients(splits.test)) == 3  # ceil(0.2 x 13 patients)
    else:
        assert (splits.test, splits.test_source) == ((), "none")


def test_every_grouping_gives_the_same_splits(grouped, tmp_path):
    made = {name: make_splits(read_index(grouped), config(grouped, folds=4, test_fraction=0.3, **keys(tmp_path)))
            for name, keys in GROUPINGS.items()}
    assert len({json.dumps(s.to_dict()) for s in made.values()}) == 1


def test_without_groups_a_patients_scans_are_split(grouped):
    # The check above is not vacuous: ungrouped, 5 folds do separate some patient's scans.
    splits = make_splits(read_index(grouped), config(grouped, folds=5))
    assert any(patients(f.train) & patients(f.val) for f in splits.folds)


def test_splits_are_stable_and_seeded(grouped, tmp_path):
    index = read_index(grouped)
    keys = {"folds": 5, "test_fraction": 0.25, "group_pattern": r"^(p\d+)_"}
    first = make_splits(index, config(grouped, **keys))
    assert make_splits(read_index(grouped), config(grouped, **keys)) == first
    unrelated = {"image_size": (64, 64), "cache_dir": tmp_path, "regions": {"whole": [1, 2]}, "val_fraction": 0.5}
    assert make_splits(index, config(grouped, **keys, **unrelated)) == first
    other_seed = make_splits(index, config(grouped, **keys, split_seed=1))
    assert other_seed.test != first.test and other_seed.folds != first.folds
    assert Splits.from_dict(json.loads(json.dumps(first.to_dict()))) == first


@pytest.mark.parametrize("val_fraction, seed", [(0.2, 0), (0.2, 3), (0.5, 1), (0.05, 7), (0.9, 2)])
def test_one_fold_without_groups_is_the_existing_case_split(grouped, tmp_path, val_fraction, seed):
    train, val = split_cases(IDS, val_fraction, seed)
    for keys in ({}, {"group_pattern": ".+"}):  # a pattern matching whole ids: each case its own patient
        splits = make_splits(read_index(grouped), config(grouped, val_fraction=val_fraction, split_seed=seed, **keys))
        assert splits.folds == (Fold(tuple(train), tuple(val)),)
    # Labelled imagesTs cases do not change the training cases' split either.
    with_test = write_named_cases(tmp_path / "with_test", "nnunetv2", IDS, test_ids=["x1", "x2"])
    splits = make_splits(read_index(with_test), config(with_test, val_fraction=val_fraction, split_seed=seed))
    assert splits.folds == (Fold(tuple(train), tuple(val)),)
    assert (splits.test, splits.test_source) == (("x1", "x2"), "imagesTs")


def test_split_keys_do_not_change_the_cache_key(grouped, tmp_path):
    plain = config(grouped)
    split = config(grouped, folds=5, test_fraction=0.2, group_pattern="p", regions={"a": [1]})
    assert split.preprocess() == plain.preprocess()
    assert cache_key("digest", split.preprocess()) == cache_key("digest", plain.preprocess())
    # volume_config reads only the plan's slice axis and spacing.
    plan = SimpleNamespace(slice_axis=None, target_spacing=(1.0, 1.0, 1.0), resample=True)
    patch = config(grouped, dims=3, folds=3, splits=tmp_path / "s.json", groups_file=tmp_path / "g.csv")
    assert patch.volume_config(plan) == config(grouped, dims=3).volume_config(plan)


@pytest.mark.parametrize("layout", ["msd", "nnunetv2"])
def test_labelled_images_ts_is_the_test_split(tmp_path, layout):
    root = write_named_cases(tmp_path / layout, layout, IDS[:10], test_ids=["t02", "t01"],
                             unlabelled_test_ids=["u01"])
    splits = make_splits(read_index(root), config(root, folds=3, test_fraction=0.4))  # test_fraction unused
    assert (splits.test, splits.test_source) == (("t01", "t02"), "imagesTs")
    assert splits.pool == tuple(sorted(IDS[:10]))


def test_cli_says_the_test_split_comes_from_images_ts(tmp_path, capsys):
    root = write_named_cases(tmp_path / "ds", "nnunetv2", CASES, test_ids=["t1", "t2"], unlabelled_test_ids=["u1"])
    assert main(["data", "splits", str(_job(tmp_path, path=root, test_fraction=0.2))]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == [
        f"dataset: {root} (nnunetv2, 10 cases (10 patients) for training, 2 labelled test cases)",
        "test: 2 cases (2 patients), the labelled imagesTs/labelsTs cases (test_fraction unused)",
    ]


def test_a_patient_in_images_ts_and_training_is_refused(tmp_path):
    root = write_named_cases(tmp_path / "ds", "msd", IDS[:6], test_ids=["p01_s9"])
    with pytest.raises(HpsearchError) as info:
        make_splits(read_index(root), config(root, group_pattern=r"^(p\d+)_"))
    assert str(info.value).startswith("patient p01 has cases in imagesTs (p01_s9) and in the training cases")


# A 5-fold splits_final.json exactly as nnU-Net v2 writes it (batchgenerators' save_json: indent 4,
# sorted keys, no final newline) for cases c00..c09.
NNUNET_FILE = "[\n" + ",\n".join(
    '    {\n        "train": [\n' + ",\n".join(f'            "c{i:02d}"' for i in range(10) if i // 2 != f)
    + '\n        ],\n        "val": [\n' + ",\n".join(f'            "c{i:02d}"' for i in (2 * f, 2 * f + 1))
    + "\n        ]\n    }"
    for f in range(5)
) + "\n]"
CASES = [f"c{i:02d}" for i in range(10)]


def test_nnunet_splits_round_trip_byte_for_byte(tmp_path):
    source = tmp_path / "nnUNet_preprocessed" / "splits_final.json"
    source.parent.mkdir()
    source.write_text(NNUNET_FILE)
    # The hand-written text is what nnU-Net's own writer produces for these folds.
    save_json(json.loads(NNUNET_FILE), str(tmp_path / "by_nnunet.json"))
    assert (tmp_path / "by_nnunet.json").read_text() == NNUNET_FILE
    folds = read_nnunet_splits(source, CASES)
    assert len(folds) == 5 and folds[2] == Fold(("c00", "c01", "c02", "c03", "c06", "c07", "c08", "c09"), ("c04", "c05"))
    out = write_nnunet_splits(folds, tmp_path / "out" / "splits_final.json")
    assert out.read_text() == NNUNET_FILE
    assert read_nnunet_splits(out, CASES) == folds


def test_a_splits_file_decides_the_folds(tmp_path):
    root = write_named_cases(tmp_path / "ds", "nnunetv2", CASES)
    (tmp_path / "splits_final.json").write_text(NNUNET_FILE)
    splits = make_splits(read_index(root), config(root, splits=tmp_path / "splits_final.json", folds=5))
    assert splits.folds == read_nnunet_splits(tmp_path / "splits_final.json", CASES)
    assert splits.test_source == "none"


def test_writing_refuses_an_existing_file_and_the_dataset_folder(tmp_path):
    root = write_named_cases(tmp_path / "ds", "msd", CASES[:4])
    folds = (Fold(("c00", "c01"), ("c02", "c03")),)
    before = snapshot(root)
    with pytest.raises(HpsearchError, match="inside the dataset folder"):
        write_nnunet_splits(folds, root / "splits_final.json", dataset_root=root)
    assert snapshot(root) == before
    path = write_nnunet_splits(folds, tmp_path / "s.json")
    with pytest.raises(HpsearchError, match="s.json: exists; choose another path"):
        write_nnunet_splits(folds, path)
    path.write_text("old")
    write_nnunet_splits(folds, path, overwrite=True)
    assert read_nnunet_splits(path, CASES) == folds


def _file(tmp_path, folds):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(folds) if not isinstance(folds, str) else folds)
    return path


BAD_SPLITS = [
    ("unknown case", [{"train": ["c00", "c01"], "val": ["zz"]}], {},
     "fold 0 names case zz, not a case of the dataset"),
    ("both sides", [{"train": ["c00", "c01"], "val": ["c02"]}, {"train": ["c03", "c04"], "val": ["c04"]}], {},
     "fold 1: case c04 is in both train and val"),
    ("patient split", [{"train": ["c00", "c02"], "val": ["c01", "c03"]}], {"group_pattern": r"^c(\d)\d"},
     "fold 0 puts patient 0 on both sides (c00 in train, c01 in val)"),
    ("fold count", [{"train": ["c00"], "val": ["c01"]}], {"folds": 3},
     "has 1 fold(s) but dataset.folds is 3"),
    ("empty val", [{"train": ["c00"], "val": []}], {}, "fold 0: 'val' must be a non-empty list"),
    ("not a list", {"train": ["c00"], "val": ["c01"]}, {}, "expected a JSON list"),
    ("not json", "[{", {}, "not readable JSON"),
]


@pytest.mark.parametrize("folds, keys, message", [b[1:] for b in BAD_SPLITS], ids=[b[0] for b in BAD_SPLITS])
def test_a_bad_splits_file_is_one_line(tmp_path, folds, keys, message):
    root = write_named_cases(tmp_path / "ds", "msd", CASES)
    with pytest.raises(HpsearchError) as info:
        make_splits(read_index(root), config(root, splits=_file(tmp_path, folds), **keys))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert "bad.json" in str(info.value)


@pytest.mark.parametrize("source", ["imagesTs", "test_fraction"])
def test_a_splits_file_naming_a_test_case_is_refused(tmp_path, source):
    test_ids = ["t1"] if source == "imagesTs" else []
    root = write_named_cases(tmp_path / "ds", "msd", CASES, test_ids=test_ids)
    keys = {"test_fraction": 0.2} if source == "test_fraction" else {}
    held = "t1" if test_ids else make_splits(read_index(root), config(root, **keys)).test[0]
    path = _file(tmp_path, [{"train": sorted({"c00", "c01"} - {held}), "val": [held]}])
    with pytest.raises(HpsearchError, match=f"fold 0 names test case {held} \\({source}\\)"):
        make_splits(read_index(root), config(root, splits=path, **keys))


@pytest.mark.parametrize(
    "ids, keys, message",
    [
        (IDS, {"group_pattern": r"^(p0\d)_"}, "does not match case p10_s0; every case id must match"),
        (IDS, {"group_pattern": r"^(x?)p"}, "finds an empty patient id in case p00_s0"),
        (IDS, {"folds": 14, "group_pattern": r"^(p\d+)_"}, "dataset.folds 14: only 13 patient(s) to split"),
        (IDS, {"folds": 12, "test_fraction": 0.1, "group_pattern": r"^(p\d+)_"},
         "holding out 2 of 13 patient(s) leaves 11, and dataset.folds 12 needs at least 12"),
        (CASES[:3], {"test_fraction": 0.5}, "holding out 2 of 3 patient(s) leaves 1, and a train/validation split"),
        (IDS, {"group_pattern": r"^p"}, "29 case(s) from 1 patient(s) left for training"),
        (IDS, {"regions": {"wt": [1, 3]}}, "dataset.regions.wt: label value(s) [3] are not foreground labels"),
    ],
)
def test_bad_split_settings_are_one_line(tmp_path, ids, keys, message):
    root = write_named_cases(tmp_path / "ds", "msd", ids, channels=1)
    with pytest.raises(HpsearchError) as info:
        make_splits(read_index(root), config(root, **keys))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: p.with_suffix(".json").write_text(json.dumps({"p00_s0": "p00"})), "case(s) p01_s0, p01_s1"),
        (lambda p: p.with_suffix(".json").write_text("[1]"), "expected a JSON object"),
        (lambda p: p.with_suffix(".json").write_text('{"p00_s0": null}'), "the patient id must be a string"),
        (lambda p: p.with_suffix(".csv").write_text("id,patient\np00_s0,p00\n"), "must name the columns case,group"),
        (lambda p: p.with_suffix(".csv").write_text("case,group\np00_s0,p00\np00_s0,p01\n"),
         "line 3: case p00_s0 is listed again with another group"),
        (lambda p: p.with_suffix(".txt").write_text("{}"), "must be a .json object"),
    ],
)
def test_a_bad_groups_file_is_one_line(grouped, tmp_path, write, message):
    write(tmp_path / "groups")
    path = next(tmp_path.glob("groups.*"))
    with pytest.raises(HpsearchError) as info:
        make_splits(read_index(grouped), config(grouped, groups_file=path))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(path) in str(info.value)


def _job(tmp_path, **dataset):
    path = tmp_path / "job.yaml"
    dataset = {key: str(value) if isinstance(value, Path) else value for key, value in dataset.items()}
    path.write_text(yaml.safe_dump({"name": "t", "dataset": dataset, "model": "unet",
                                    "params": {"learning_rate": 1e-3, "epochs": 1}}))
    return path


@pytest.mark.parametrize(
    "dataset, message",
    [
        ({"group_pattern": "(p"}, "dataset.group_pattern: Value error, not a valid regular expression"),
        ({"group_pattern": "p", "groups_file": "g.json"}, "give either group_pattern or groups_file"),
        ({"folds": 1}, "dataset.folds: Input should be greater than or equal to 2"),
        ({"folds": 21}, "dataset.folds: Input should be less than or equal to 20"),
        ({"test_fraction": 0.6}, "dataset.test_fraction: Input should be less than or equal to 0.5"),
        ({"test_fraction": 0}, "dataset.test_fraction: Input should be greater than 0"),
        ({"regions": {"whole tumour": [1]}}, "region name 'whole tumour': use letters, digits and _"),
        ({"regions": {"wt": []}}, "region wt: list at least one label value"),
        ({"regions": {"wt": [0, 1]}}, "region wt: label values must be foreground values"),
    ],
)
def test_bad_split_keys_in_a_job_file_are_one_line(grouped, tmp_path, capsys, dataset, message):
    job = _job(tmp_path, path=grouped, **dataset)
    assert main(["data", "splits", str(job)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err, err
    assert str(job) in err


def test_cli_prints_the_splits_and_writes_nnunet_format(grouped, tmp_path, capsys):
    job = _job(tmp_path, path=grouped, folds=3, test_fraction=0.2, group_pattern=r"^(p\d+)_")
    out = tmp_path / "nnunet" / "splits_final.json"
    assert main(["data", "splits", str(job), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    splits = make_splits(read_index(grouped), config(grouped, folds=3, test_fraction=0.2, group_pattern=r"^(p\d+)_"))
    assert printed[0] == f"dataset: {grouped} (msd, 29 cases (13 patients) for training, 0 labelled test cases)"
    assert printed[1] == (f"test: {len(splits.test)} cases ({len(patients(splits.test))} patients), "
                          "held out by test_fraction 0.2")
    for number, fold in enumerate(splits.folds):
        assert printed[2 + number] == (
            f"fold {number}: train {len(fold.train)} cases ({len(patients(fold.train))} patients), "
            f"val {len(fold.val)} cases ({len(patients(fold.val))} patients)")
    assert printed[-1].startswith(f"wrote {out} (3 fold(s)")
    assert read_nnunet_splits(out, IDS) == splits.folds
    # The written file, given back as dataset.splits, reproduces the folds (and test split).
    again = _job(tmp_path, path=grouped, splits=out, test_fraction=0.2, group_pattern=r"^(p\d+)_")
    assert main(["data", "splits", str(again)]) == 0
    assert capsys.readouterr().out.splitlines()[:5] == printed[:5]


def test_cli_refuses_to_overwrite_or_write_into_the_dataset(grouped, tmp_path, capsys):
    job = _job(tmp_path, path=grouped)
    before = snapshot(grouped)
    assert main(["data", "splits", str(job), "--out", str(grouped / "splits_final.json")]) == 2
    assert "inside the dataset folder" in capsys.readouterr().err
    assert snapshot(grouped) == before
    (tmp_path / "taken.json").write_text("x")
    assert main(["data", "splits", str(job), "--out", str(tmp_path / "taken.json")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["data", "splits", str(job), "--out", str(tmp_path / "taken.json"), "--overwrite"]) == 0
    assert len(read_nnunet_splits(tmp_path / "taken.json", IDS)) == 1


def test_cli_says_which_cases_a_splits_file_leaves_out(tmp_path, capsys):
    root = write_named_cases(tmp_path / "ds", "msd", [*CASES, "c10", "c11"])
    (tmp_path / "splits_final.json").write_text(NNUNET_FILE)
    assert main(["data", "splits", str(_job(tmp_path, path=root, splits=tmp_path / "splits_final.json"))]) == 0
    assert f"not used: 2 training case(s) that {tmp_path / 'splits_final.json'} does not name" in capsys.readouterr().out
