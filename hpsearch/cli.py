"""The ``hpsearch`` command.

A thin front door: parse arguments, call the package, print. Known problems
(:class:`~hpsearch.errors.HpsearchError`) become one line on stderr and exit code 2;
anything else is a bug and keeps its traceback. Heavy imports (TensorFlow) happen
inside the commands that need them, so ``hpsearch data check`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hpsearch.cluster.commands import add_commands as add_cluster_commands
from hpsearch.data_commands import add_data_commands
from hpsearch.errors import EXIT_USER_ERROR, HpsearchError, SearchInterrupted



def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except HpsearchError as exc:
        for line in str(exc).splitlines() or ["unknown error"]:
            print(f"hpsearch: error: {line}", file=sys.stderr)
        return EXIT_USER_ERROR
    except SearchInterrupted as exc:
        print(f"hpsearch: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for medical image segmentation (Ray Tune, Optuna, MLflow).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train one configuration of a job")
    train.add_argument("job", type=Path, help="job YAML file")
    train.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a hyperparameter (learning_rate=3e-4), a top-level key (name=lv-try2) or any "
        "dotted key (dataset.image_size=[64,64]); repeatable",
    )
    train.add_argument("--threads", type=int, help="TensorFlow intra-op threads (default: job's runtime)")
    train.add_argument("--out", type=Path, help="save the final training state into this folder")
    train.set_defaults(func=_cmd_train)

    run = commands.add_parser("run", help="run the hyperparameter search a job describes (or extend a finished one)")
    run.add_argument("job", type=Path, nargs="?", help="job YAML file with a search_space")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override any key, e.g. search.num_trials=4; repeatable")
    run.add_argument("--extend", type=Path, metavar="EXPERIMENT",
                     help="add --trials more trials to this finished search (same experiment folder, "
                     "MLflow parent run and Optuna study) instead of starting a new one")
    run.add_argument("--trials", type=int, metavar="N", help="with --extend: how many trials to add")
    run.add_argument("--address", help="Ray cluster to attach to (default: $RAY_ADDRESS, else a local Ray)")
    run.set_defaults(func=_cmd_run)

    resume = commands.add_parser("resume", help="continue an interrupted search")
    resume.add_argument("experiment", type=Path, help="the experiment folder `hpsearch run` printed")
    resume.add_argument("--address", help="Ray cluster to attach to")
    resume.add_argument("--accept-data-change", action="store_true",
                        help="go on although the dataset's content changed since the search started "
                        "(recorded in the experiment folder and the MLflow parent run)")
    resume.set_defaults(func=_cmd_resume)

    ui = commands.add_parser("ui", help="start the MLflow UI on a job's tracking store")
    ui.add_argument("job", type=Path, nargs="?", help="job YAML file (its tracking.uri)")
    ui.add_argument("--tracking-uri", help="any MLflow backend store URI instead of a job's")
    ui.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=int, default=5000)
    ui.set_defaults(func=_cmd_ui)

    export = commands.add_parser("export", help="export the best trial's best checkpoint")
    export.add_argument("experiment", type=Path, help="experiment folder of a finished search")
    export.add_argument("--out", type=Path, required=True, help="new folder for model.keras + hpsearch-model.json")
    export.add_argument("--register", metavar="NAME", help="also add a version to the MLflow Model Registry")
    export.add_argument("--ensemble", action="store_true",
                        help="export the best trial's cross-validation fold models as one model that averages "
                             "their probabilities (needs a search with dataset.folds and search.cross_validation)")
    export.set_defaults(func=_cmd_export)

    dash = commands.add_parser("dashboard", help="write a search's HTML dashboard, or compare searches")
    dash.add_argument("experiments", type=Path, nargs="+", metavar="EXPERIMENT",
                      help="experiment folder(s) `hpsearch run` printed")
    dash.add_argument("--compare", action="store_true",
                      help="compare the searches: best score against compute and wall time")
    dash.add_argument("--out", type=Path, help="HTML file to write (default: EXPERIMENT/dashboard/dashboard.html; "
                      "with --compare, dashboards/compare-<stamp>.html under the current folder)")
    dash.add_argument("--no-log", action="store_true", help="do not log the dashboard to the search's MLflow run")
    dash.add_argument("--mlflow-ui", metavar="URL", help="MLflow UI that run links point to (default: the "
                      "tracking server if it is one, else http://127.0.0.1:5000 as `hpsearch ui` serves it)")
    dash.set_defaults(func=_cmd_dashboard)

    predict = commands.add_parser("predict", help="segment NIfTI scans with an exported model")
    predict.add_argument("model", type=Path, help="folder written by `hpsearch export`")
    predict.add_argument("input", type=Path, help="a NIfTI file or a folder of them")
    predict.add_argument("output", type=Path, help="output file (for a file) or new folder (for a folder)")
    predict.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                         help="test-time mirroring (models trained on patches; 2-8x slower); "
                              "default: as validated during the search (off)")
    predict.set_defaults(func=_cmd_predict)

    evaluate = commands.add_parser(
        "evaluate", help="Dice, IoU and HD95 per case: predictions against labels, or a model on a dataset",
        description="A B: if A is a model folder (hpsearch export), segment dataset B's cases into --out "
        "and score them; else score prediction folder A against label folder B (or dataset folder B). "
        "Writes evaluation.csv and evaluation.json into --out. EXPERIMENT alone: evaluate a finished "
        "search's chosen model on its locked test split (what the search runs at its end).",
    )
    evaluate.add_argument("a", type=Path, metavar="MODEL_OR_PRED_DIR",
                          help="an exported model folder, a folder of predicted CASE.nii.gz files, "
                          "or (alone) an experiment folder")
    evaluate.add_argument("b", type=Path, nargs="?", metavar="DATASET_OR_LABEL_DIR",
                          help="a dataset folder (dataset.json), or a folder of ground-truth CASE.nii.gz files")
    evaluate.add_argument("--out", type=Path, help="new folder for predictions (model mode: required) "
                          "and evaluation.csv + evaluation.json")
    evaluate.add_argument("--regions", nargs="+", action="extend", metavar="NAME=V1,V2",
                          help="also score unions of label values, e.g. whole_tumour=1,2,4 tumour_core=1,4 "
                          "(default: the regions the model's export records)")
    evaluate.add_argument("--split", choices=["test", "train"],
                          help="cases of a dataset folder: test (imagesTs/labelsTs, default) or train")
    evaluate.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                          help="model mode: test-time mirroring (default: the export's setting)")
    evaluate.set_defaults(func=_cmd_evaluate)

    add_cluster_commands(commands)

    add_data_commands(commands)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()
    from hpsearch.data.guard import refuse_inside
    from hpsearch.runtime import configure_tensorflow
    from hpsearch.spec import load_job

    job = load_job(args.job, args.overrides)
    runtime = job.runtime
    if args.threads is not None:
        if args.threads < 1:
            raise HpsearchError(f"--threads {args.threads}: must be at least 1")
        runtime = runtime.model_copy(update={"intra_op_threads": args.threads})
    if args.out is not None:
        refuse_inside(args.out, job.dataset.path, "--out")
        if args.out.exists() and any(args.out.iterdir()):
            raise HpsearchError(f"--out {args.out}: folder exists and is not empty; choose a new one")

    started = time.perf_counter()
    data, from_cache = job.load_data()
    print(f"data: {data.summary()} ({'cache' if from_cache else 'preprocessed'} in "
          f"{time.perf_counter() - started:.1f}s)", flush=True)
    configure_tensorflow(runtime)
    from hpsearch.trainer import Trainer

    trainer = Trainer(data, job.model, job.params_for(data.info), seed=runtime.seed, augment=job.augment,
                      workers=runtime.loader_workers, fidelity=job.scheduler.fidelity)
    shown = ", ".join(f"{k}={v}" for k, v in trainer.params.model_dump().items())
    print(f"train: {trainer.model_name} ({trainer.model.count_params():,} weights) with {shown}", flush=True)
    try:
        trainer.fit(on_epoch=lambda result: print(result.format(), flush=True))
    finally:
        trainer.close()
    best = next(h for h in trainer.history if h["epoch"] == trainer.best_epoch)
    per_class = ", ".join(f"{k[9:]}={v:.4f}" for k, v in best.items() if k.startswith("val_dice_"))
    print(f"best epoch {trainer.best_epoch}: val_dice {trainer.best_val_dice:.4f} ({per_class})")
    if args.out is not None:
        print(f"state saved to {trainer.save(args.out)}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()
    if args.extend is not None:
        if args.job is not None or args.overrides:
            raise HpsearchError(f"run --extend {args.extend}: no job file or --set; the search runs as it was recorded")
        if args.trials is None:
            raise HpsearchError(f"run --extend {args.extend}: say how many trials to add with --trials N")
        from hpsearch.search.driver import extend_search

        extend_search(args.extend, args.trials, address=args.address, echo=_echo)
        return 0
    if args.job is None:
        raise HpsearchError("run: give a job file (or --extend EXPERIMENT --trials N)")
    if args.trials is not None:
        raise HpsearchError("run --trials: only with --extend; a job's trial count is search.num_trials "
                            "(--set search.num_trials=N)")
    from hpsearch.search.driver import run_search

    run_search(args.job, args.overrides, address=args.address, echo=_echo)
    return 0


def _cmd_resume(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()
    from hpsearch.search.driver import resume_search

    resume_search(args.experiment, address=args.address, echo=_echo, accept_data_change=args.accept_data_change)
    return 0


def _cmd_ui(args: argparse.Namespace) -> int:
    from hpsearch.mlflow_server import mlflow_server_command, mlflow_server_env
    from hpsearch.processes import run_foreground
    from hpsearch.tracking.store import check_tracking_uri, resolve_uri

    if (args.job is None) == (args.tracking_uri is None):
        raise HpsearchError("ui: give either a job file or --tracking-uri")
    if args.tracking_uri is not None:
        uri = args.tracking_uri
    else:
        from hpsearch.spec import load_job

        uri = resolve_uri(load_job(args.job).tracking.uri)
    if check_tracking_uri(uri, "--tracking-uri" if args.tracking_uri else f"{args.job}: tracking.uri") == "http":
        print(f"{uri} is already a tracking server: open it in a browser")
        return 0
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: bound to {args.host}: anyone who can reach it can read and change runs", file=sys.stderr)
    # Its own process group, signals forwarded, group stopped on exit: no orphaned workers.
    return run_foreground(mlflow_server_command(uri, args.host, args.port), env=mlflow_server_env())


def _cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()
    from hpsearch.search.exporting import export_best

    out = export_best(args.experiment, args.out, register=args.register, ensemble=args.ensemble, echo=_echo)
    print(f"exported to {out}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()  # the best trial's predictions run its model
    from hpsearch.dashboard import write_comparison, write_dashboard

    if args.compare:
        write_comparison(args.experiments, out=args.out, ui_base=args.mlflow_ui, echo=_echo)
    elif len(args.experiments) > 1:
        raise HpsearchError("dashboard: several experiment folders given; add --compare to compare them")
    else:
        write_dashboard(args.experiments[0], out=args.out, log=not args.no_log, ui_base=args.mlflow_ui, echo=_echo)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from hpsearch.runtime import quiet_tensorflow

    quiet_tensorflow()
    from hpsearch.predict import predict_path

    for path in predict_path(args.model, args.input, args.output, mirror=args.mirror):
        print(f"wrote {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    if args.b is None:  # `hpsearch evaluate EXPERIMENT`: the locked test split, as the search's last step
        given = [flag for flag, value in (("--out", args.out), ("--regions", args.regions), ("--split", args.split),
                                          ("--mirror", args.mirror)) if value is not None]
        if given:
            raise HpsearchError(f"evaluate {args.a}: {', '.join(given)} need(s) a second folder (DATASET or LABEL "
                                "dir); an experiment is evaluated as its search recorded it")
        from hpsearch.runtime import quiet_tensorflow

        quiet_tensorflow()
        from hpsearch.search.holdout import evaluate_search

        evaluate_search(args.a, echo=_echo)
        return 0
    from hpsearch.evaluation.command import parse_regions, run_evaluate

    regions = parse_regions(args.regions) if args.regions else None
    report = run_evaluate(args.a, args.b, out=args.out, regions=regions, split=args.split, mirror=args.mirror)
    print(report.format())
    for name in ("evaluation.csv", "evaluation.json") if args.out else ():
        print(f"wrote {args.out / name}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hpsearch")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def _echo(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
