"""Dashboards of real searches: the page, its figures, importance, MLflow artifacts, compare, errors."""

from __future__ import annotations

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import numpy as np
import pytest

from hpsearch.cli import main
from hpsearch.dashboard.collect import collect_search
from hpsearch.dashboard.figures import asha_rungs, curves_figure, outcome_style
from hpsearch.dashboard.importance import compute_importance
from hpsearch.dashboard.overlays import pick_slices
from hpsearch.search.driver import _in_child
from hpsearch.experiment import SearchState, write_state
from hpsearch.tracking import start_search_run

PNGS = {"progress.png", "curves.png", "parallel.png", "importance.png", "predictions.png"}


def expected_pngs(kind: str) -> set[str]:
    # The random search has a single finished trial (the others diverge): no importance.
    return PNGS if kind == "tpe" else PNGS - {"importance.png"}


def test_every_search_ends_with_a_self_contained_dashboard(searches):
    for kind, experiment in searches.items():
        page = (experiment / "dashboard" / "dashboard.html").read_text()
        assert fetched(page) == []  # self-contained: nothing is loaded from anywhere
        assert page.count('<script type="text/javascript">/**') == 1  # plotly.js inlined once
        # progress, curves, parallel coordinates (+ importance where it can be computed)
        assert page.count("Plotly.newPlot") == (4 if kind == "tpe" else 3)
        if kind == "random":
            assert "importance needs at least 2 finished trials, this search has 1" in page
        search = collect_search(experiment)
        for trial in search.trials:
            assert trial.trial_id in page
            assert f"#/experiments/{search.experiment_id}/runs/{trial.run_id}" in page
        assert "data:image/png;base64," in page  # the best trial's predictions
        assert {p.name for p in (experiment / "dashboard").glob("*.png")} == expected_pngs(kind)


def test_dashboard_and_pngs_are_logged_to_the_parent_run(searches):
    for kind, experiment in searches.items():
        state = json.loads((experiment / "hpsearch-search.json").read_text())
        client = mlflow.MlflowClient(state["tracking_uri"])
        logged = {Path(a.path).name for a in client.list_artifacts(state["parent_run_id"], "dashboard")}
        assert logged == expected_pngs(kind) | {"dashboard.html"}


def test_curves_are_coloured_by_the_outcome_mlflow_recorded(searches):
    search = collect_search(searches["tpe"])
    results = {t["trial_id"]: t["status"] for t in json.loads((searches["tpe"] / "results.json").read_text())["trials"]}
    assert {t.trial_id: t.status for t in search.trials} == results
    assert asha_rungs(search) == [1, 2]
    figure = curves_figure(search)
    lines = [trace for trace in figure.data if trace.x]
    assert len(lines) == len(search.trials)
    for trial in search.trials:
        label, color = outcome_style(trial, asha_rungs(search))
        trace = next(t for t in lines if f"trial {trial.trial_id} " in t.hovertemplate)
        assert trace.line.color == color and trace.legendgroup == label
        assert list(trace.y) == pytest.approx(trial.values)

    failing = collect_search(searches["random"])
    failed = [t for t in failing.trials if t.status == "failed"]
    assert failed and len(failed) < len(failing.trials)
    assert {outcome_style(t, [])[0] for t in failed} == {"failed"}
    assert all("diverged" in t.error for t in failed), [t.error for t in failed]


def test_outcome_style_names_the_asha_rung():
    trial = dataclasses.replace(_trial(), status="stopped_early", stopped_at_epoch=2)
    label, color = outcome_style(trial, [1, 2, 4])
    assert label == "stopped by ASHA at rung 2"
    assert color != outcome_style(dataclasses.replace(trial, stopped_at_epoch=1), [1, 2, 4])[1]


def test_importance_from_optuna_evaluators(searches):
    search = collect_search(searches["tpe"])
    importance = compute_importance(search)
    assert set(importance.scores) == {"fANOVA", "PED-ANOVA"}
    for scores in importance.scores.values():
        assert set(scores) <= set(search.space) and sum(scores.values()) == pytest.approx(1.0, abs=1e-6)

    one = dataclasses.replace(search, trials=search.finished()[:1])
    assert not compute_importance(one).scores and "at least 2" in compute_importance(one).message
    same = [dataclasses.replace(t, params=dict(search.finished()[0].params)) for t in search.finished()]
    constant = compute_importance(dataclasses.replace(search, trials=same))
    assert not constant.scores and "more than one value" in constant.message


def test_compare_two_searches(searches, tmp_path, capsys):
    out = tmp_path / "cmp" / "both.html"
    assert main(["dashboard", "--compare", str(searches["tpe"]), str(searches["random"]), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.count("Plotly.newPlot") == 1 and "searches-table" in page
    for experiment in searches.values():
        assert collect_search(experiment).name in page
    assert out.with_name("both.png").stat().st_size > 0
    assert "comparison:" in capsys.readouterr().out


def test_dashboard_command_rewrites_without_logging(searches, tmp_path, capsys):
    out = tmp_path / "again.html"
    assert main(["dashboard", str(searches["tpe"]), "--out", str(out), "--no-log",
                 "--mlflow-ui", "http://mlflow.example:8080/"]) == 0
    assert "http://mlflow.example:8080/#/experiments/" in out.read_text()
    assert {p.name for p in tmp_path.glob("*.png")} == PNGS
    assert "logged" not in capsys.readouterr().out


class _Resources(HTMLParser):
    """The URLs a browser would load for a page: scripts, styles, images, frames."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe") and attrs.get("src"):
            self.urls.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.urls.append(attrs["href"])


def fetched(page: str) -> list[str]:
    """External URLs the page loads (script bodies are data to the parser, not tags)."""
    parser = _Resources()
    parser.feed(page)
    return [url for url in parser.urls if not url.startswith("data:")]


def _errors(capsys) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def test_bad_input_is_one_line_and_exit_2(searches, tmp_path, capsys):
    assert main(["dashboard", str(tmp_path)]) == 2
    assert _errors(capsys) == [f"hpsearch: error: {tmp_path}: not an hpsearch experiment folder "
                               "(no hpsearch-search.json); pass the folder `hpsearch run` printed"]

    unreachable = tmp_path / "moved"
    state = json.loads((searches["tpe"] / "hpsearch-search.json").read_text())
    unreachable.mkdir()
    write_state(unreachable, SearchState.model_validate({**state, "tracking_uri": "http://127.0.0.1:9"}))
    assert main(["dashboard", str(unreachable)]) == 2
    (line,) = _errors(capsys)
    assert line.startswith("hpsearch: error: tracking.uri http://127.0.0.1:9: MLflow is not reachable")

    # A search whose parent run exists but no trial ever reported.
    empty = tmp_path / "empty"
    parent = start_search_run(state["tracking_uri"], "dash-empty", run_name="empty", params={}, tags={})
    empty.mkdir()
    write_state(empty, SearchState.model_validate({**state, "parent_run_id": parent}))
    assert main(["dashboard", str(empty)]) == 2
    (line,) = _errors(capsys)
    assert "no finished trial with a val_dice in MLflow (0 completed" in line and "hpsearch resume" in line

    assert main(["dashboard", str(searches["tpe"]), str(searches["random"])]) == 2
    assert _errors(capsys) == ["hpsearch: error: dashboard: several experiment folders given; "
                               "add --compare to compare them"]
    assert main(["dashboard", "--compare", str(searches["tpe"])]) == 2
    assert len(_errors(capsys)) == 1


@pytest.mark.parametrize("command, what", [("dashboard", "dashboard"), ("evaluate", "test evaluation")])
def test_a_failing_final_step_is_one_warning_after_the_search(tmp_path, command, what):
    lines: list[str] = []
    _in_child(command, tmp_path, what, lines.append)  # not an experiment folder: the step fails
    assert len(lines) == 1 and lines[0].startswith(f"warning: {what} not written (")
    assert f"hpsearch {command} {tmp_path}" in lines[0]


def test_pick_slices_prefers_one_full_slice_per_case():
    labels = np.zeros((6, 4, 4), np.uint8)
    labels[0, :1], labels[1, :3], labels[3, :2], labels[4, :4] = 1, 1, 2, 1  # slice 5 empty
    cases = np.array([0, 0, 0, 1, 1, 1])
    assert pick_slices(labels, cases, 3) == [4, 1, 3]
    assert pick_slices(labels, cases, 10) == [4, 1, 3, 0]


def _trial():
    from hpsearch.dashboard.collect import Trial

    return Trial("t1", "r1", "trial-1", "completed", {}, [1, 2], [0.5, 0.6], [0, 1], [1.0, 1.0])
