"""``hpsearch data ...``: inspect, plan, split or generate datasets (no TensorFlow, starts fast)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hpsearch.errors import EXIT_USER_ERROR, HpsearchError


def add_data_commands(commands) -> None:
    """Add the ``data`` group of subcommands to the ``hpsearch`` parser's subparsers."""
    data = commands.add_parser("data", help="inspect or generate datasets").add_subparsers(
        dest="data_command", required=True, metavar="SUBCOMMAND"
    )
    check = data.add_parser("check", help="print a dataset's fingerprint and every defect")
    check.add_argument("directory", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    check.add_argument("--json", action="store_true", help="print the fingerprint as JSON")
    check.set_defaults(func=_cmd_data_check)

    plan = data.add_parser(
        "plan", help="derive spacing, patch size, batch size and poolings from a dataset's fingerprint",
        description="Plan training the way nnU-Net does: target spacing, median shape at it, and the "
        "largest patch (with batch size >= 2) whose estimated training memory fits the budget.",
    )
    plan.add_argument("directory", type=Path, help="dataset folder (MSD or nnU-Net v2 layout)")
    plan.add_argument("--dims", type=int, choices=[2, 3], default=3, help="2D slices or 3D patches (default: 3)")
    plan.add_argument("--slice-axis", type=int, choices=[0, 1, 2],
                      help="for --dims 2: the axis to slice along (default: the coarsest)")
    plan.add_argument("--memory-gb", type=float, metavar="G",
                      help="training memory budget in GiB (default: a quarter of this machine's RAM)")
    plan.add_argument("--base-filters", type=int, default=32, metavar="N",
                      help="filters of the U-Net's first level the estimate assumes (default: 32)")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(func=_cmd_data_plan)

    splits = data.add_parser(
        "splits", help="print a job's test split and folds; optionally write them for nnU-Net",
        description="Decide the splits a job's dataset section asks for (folds, patient groups, test split) "
        "from case ids alone, print them, and with --out write nnU-Net's splits_final.json.",
    )
    splits.add_argument("job", type=Path, help="job YAML file")
    splits.add_argument("--out", type=Path, help="write the folds as nnU-Net's splits_final.json here")
    splits.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    splits.set_defaults(func=_cmd_data_splits)

    synth = data.add_parser("synth", help="write a synthetic NIfTI dataset in MSD layout")
    synth.add_argument("--kind", required=True, choices=["lv", "brats", "brain"])
    synth.add_argument("--cases", type=int, default=24)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", type=Path, required=True, help="new folder to create")
    synth.set_defaults(func=_cmd_data_synth)


def _cmd_data_check(args: argparse.Namespace) -> int:
    from hpsearch.data import check_dataset

    report = check_dataset(args.directory)
    if args.json:
        print(json.dumps(report.fingerprint.to_dict(), indent=2))
    else:
        print(report.format())
    if _print_defects(report, args.directory):
        return EXIT_USER_ERROR
    print("no defects found")
    return 0


def _cmd_data_plan(args: argparse.Namespace) -> int:
    from hpsearch.data import check_dataset, make_plan

    report = check_dataset(args.directory)
    if _print_defects(report, args.directory):  # a plan from a partly read dataset would mislead
        return EXIT_USER_ERROR
    if args.memory_gb is not None and not args.memory_gb > 0:
        raise HpsearchError(f"--memory-gb: must be positive, got {args.memory_gb}")
    if args.memory_gb is None:
        import psutil

        budget = psutil.virtual_memory().total // 4
    else:
        budget = int(args.memory_gb * 2**30)
    plan = make_plan(report.fingerprint, args.dims, budget, base_filters=args.base_filters,
                     slice_axis=args.slice_axis)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else plan.format())
    return 0


def _print_defects(report, directory: Path) -> bool:
    """Every defect on stderr, one line each; whether there were any."""
    for defect in report.defects:
        print(f"hpsearch: defect: {defect}", file=sys.stderr)
    if report.defects:
        print(f"hpsearch: error: {len(report.defects)} defect(s) found in {directory}", file=sys.stderr)
    return bool(report.defects)


def _cmd_data_splits(args: argparse.Namespace) -> int:
    from hpsearch.data import case_groups, make_splits, read_index, write_nnunet_splits
    from hpsearch.spec import load_job

    config = load_job(args.job).dataset
    index = read_index(config.path)
    splits = make_splits(index, config)
    ids = [c.case_id for c in (*index.cases, *index.test_cases)]
    groups = case_groups(ids, config.group_pattern, config.groups_file)

    def counted(cases) -> str:
        return f"{len(cases)} cases ({len({groups[c] for c in cases})} patients)"

    print(f"dataset: {index.root} ({index.layout}, {counted([c.case_id for c in index.cases])} for training, "
          f"{len(index.test_cases)} labelled test cases)")
    ignored = " (test_fraction unused)" if config.test_fraction is not None else ""
    test = {"imagesTs": f"the labelled imagesTs/labelsTs cases{ignored}", "none": "none",
            "test_fraction": f"held out by test_fraction {config.test_fraction}"}[splits.test_source]
    print(f"test: {counted(splits.test)}, {test}" if splits.test else "test: none (no labelled imagesTs, "
          "no test_fraction)")
    for number, fold in enumerate(splits.folds):
        print(f"fold {number}: train {counted(fold.train)}, val {counted(fold.val)}")
    left_out = len({c.case_id for c in index.cases} - {*splits.pool, *splits.test})
    if left_out:
        print(f"not used: {left_out} training case(s) that {config.splits} does not name")
    if args.out is not None:
        path = write_nnunet_splits(splits.folds, args.out, dataset_root=index.root, overwrite=args.overwrite)
        print(f"wrote {path} ({len(splits.folds)} fold(s), nnU-Net's splits_final.json)")
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from hpsearch.data import synthesize

    started = time.perf_counter()
    out = synthesize(args.kind, args.out, args.cases, args.seed)
    print(f"wrote {args.cases} {args.kind} cases to {out} in {time.perf_counter() - started:.1f}s")
    return 0

