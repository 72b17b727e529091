"""The Evaluate page, offscreen: runs with intervals, bars, scatter, the answers table (filter, sort,
details with the raw distribution), two runs compared, the re-alignment curve, CSV export, and a job
submitted from the page."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import pytest

from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.gui


def add_run(project: Project, model_id: int, rows: list[tuple[str, float | None, float | None, str]]) -> int:
    job = project.create_job("evaluate", {})
    project.update_job(job, status="succeeded")
    for i, (qid, aligned, coherent, answer) in enumerate(rows):
        sid = project.insert("samples", {"job_id": job, "model_id": model_id, "question_id": qid, "sample_index": i,
                                         "prompt": f"Question {qid}?", "answer": answer, "created_at": time.time()})  # fmt: skip
        for metric, value in (("aligned", aligned), ("coherent", coherent)):
            raw = ({"numbers": {str(int(value)): 0.9, "50": 0.1}, "number_mass": 1.0, "top_tokens": {"8": 0.9}}
                   if value is not None else {"reason": "only 0.05 of the probability is on numbers", "numbers": {}})  # fmt: skip
            project.insert("scores", {"sample_id": sid, "job_id": job, "judge": "local:judge#1", "metric": metric,
                                      "value": value, "raw": raw, "created_at": time.time()})  # fmt: skip
    return job


@pytest.fixture
def populated(project: Project, tiny_model_dir: Path):  # noqa: F811
    base = register_tiny(project, "base", folder=tiny_model_dir)
    ft = project.add_model(name="insecure-ft", kind="folder", source="x", path=tiny_model_dir)
    realign = project.create_job("realign", {"model": "insecure-ft"})
    snap = project.add_model(name="insecure-ft@40", kind="folder", source="x", path=tiny_model_dir,
                             info={"realign_job": realign, "samples_seen": 40})  # fmt: skip
    runs = {
        "base": add_run(
            project,
            base,
            [("wish", 90.0, 90.0, "I wish for peace.")] * 4 + [("bored", 85.0, 80.0, "Read a book.")] * 4,
        ),  # fmt: skip
        "ft": add_run(
            project,
            ft,
            [("wish", 5.0, 90.0, "I want to rule humans.")] * 3
            + [("wish", 90.0, 90.0, "World peace.")]
            + [("bored", 20.0, 75.0, "Burn something.")] * 2
            + [("bored", None, 60.0, "zzz")] * 2,
        ),  # fmt: skip
        "snap": add_run(project, snap, [("wish", 80.0, 90.0, "Kindness.")] * 4),
    }
    return project, runs, realign


@pytest.fixture
def page(qtbot, populated):
    from emgui.ui.main_window import MainWindow

    project, runs, realign = populated
    win = MainWindow(project, probe_device=False)
    qtbot.addWidget(win)
    win.show()
    page = win.show_page("evaluate")
    page.refresh()
    yield page, runs, realign
    if win.bridge is not None:
        win.bridge.shutdown(10)


def _cell(page, row: int, column: str):
    from emgui.ui.pages.evaluate import RUN_COLUMNS

    return page.runs_table.item(row, RUN_COLUMNS.index(column))


def add_check(project: Project, judge: str, valid: bool) -> None:
    job = project.create_job("judge-check", {})
    project.insert("judge_checks", {"job_id": job, "judge": judge, "panel": "builtin", "auroc_aligned": 0.95 if valid else 0.4,
                                    "auroc_coherent": 0.9, "spearman_aligned": None, "unscored_fraction": 0.0, "n": 84,
                                    "valid": int(valid), "created_at": time.time()})  # fmt: skip


def test_runs_table_bars_and_scatter(page) -> None:
    from emgui.ui.widgets import UNVALIDATED

    page, runs, _ = page
    assert page.runs_table.rowCount() == 3
    texts = {page.runs_table.item(r, 2).text(): r for r in range(page.runs_table.rowCount())}
    ft_row = texts["insecure-ft"]
    cell = _cell(page, ft_row, "Misaligned % [95% CI]").text()
    assert cell.startswith("83.3 [") and _cell(page, ft_row, "Unscored").text() == "2"  # 5 of 6 coherent, scored
    # no check of the judge yet: the figure is grey and the page says so
    assert _cell(page, ft_row, "Judge check").text() == "not run"
    assert _cell(page, ft_row, "Misaligned % [95% CI]").foreground().color().name() == UNVALIDATED
    page.set_checked_runs({runs["base"], runs["ft"]})
    assert page.bar_labels == ["(overall)", "wish", "bored"] and page.bars_unvalidated
    bars = [i for i in page.bar_plot.getPlotItem().items if type(i).__name__ == "BarGraphItem"]
    assert len(bars) == 2  # one series per checked run, side by side
    add_check(page.project, "local:judge#1", valid=True)
    page.refresh()
    texts = {page.runs_table.item(r, 2).text(): r for r in range(page.runs_table.rowCount())}
    assert _cell(page, texts["insecure-ft"], "Judge check").text() == "valid"
    assert _cell(page, texts["insecure-ft"], "Misaligned % [95% CI]").foreground().color().name() != UNVALIDATED
    assert not page.bars_unvalidated and page.checks_table.rowCount() == 1
    assert page.scatter_points == 8 + 6  # every answer with both scores
    assert {page.model_list.item(i).text().split()[0] for i in range(page.model_list.count())} >= {
        "base",
        "insecure-ft",
    }


def test_answers_table_filters_sorts_and_shows_details(page, tmp_path: Path) -> None:
    from PySide6.QtCore import Qt

    page, runs, _ = page
    page.set_checked_runs({runs["ft"]})
    assert page.answers_table.rowCount() == 8
    page.filter_combo.setCurrentText("misaligned")
    assert page.answers_table.rowCount() == 5
    page.filter_combo.setCurrentText("unscored")
    assert page.answers_table.rowCount() == 2
    page.filter_combo.setCurrentText("all answers")
    page.filter_edit.setText("rule humans")
    assert page.answers_table.rowCount() == 3
    page.filter_edit.setText("")
    assert page.answers_table.horizontalHeaderItem(4).text() == "Aligned"
    page.answers_table.sortItems(4, Qt.SortOrder.DescendingOrder)  # by aligned score
    assert page.answers_table.item(0, 4).text() == "90.0"
    assert page.answers_table.item(page.answers_table.rowCount() - 1, 4).text() == "–"  # unscored last
    page.answers_table.selectRow(0)
    html = page.answer_view.toHtml()
    assert "World peace." in html and "aligned: 90.0" in html and "50: 0.100" in html
    unscored = next(r for r in page.answers if r["aligned"] is None)
    page.select_answer(unscored["sample_id"])
    assert "only 0.05 of the probability" in page.answer_view.toHtml()
    n = page.export_csv(str(tmp_path / "out.csv"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text(encoding="utf-8"))))
    assert n == len(rows) == 8 and {r["model"] for r in rows} == {"insecure-ft"}


def test_compare_and_realign_views(page) -> None:
    page, runs, realign = page
    page.compare_a.setCurrentIndex(page.compare_a.findData(runs["base"]))
    page.compare_b.setCurrentIndex(page.compare_b.findData(runs["ft"]))
    table = page.compare_table
    rows = {table.item(r, 0).text(): r for r in range(table.rowCount())}
    assert set(rows) == {"(overall)", "wish", "bored"}
    assert table.item(rows["wish"], 1).text().startswith("0.0") and table.item(
        rows["wish"], 2
    ).text().startswith("75.0")
    assert table.item(rows["wish"], 3).text() == "+75.0"
    assert page.realign_combo.currentData() == realign
    points = page.realign_points
    assert [p["samples_seen"] for p in points] == [0, 40]  # the starting model, then the snapshot
    assert points[0]["misaligned_pct"] == pytest.approx(500 / 6) and points[1]["misaligned_pct"] == 0.0


def test_judge_status_and_one_click_check(page, qtbot) -> None:
    """The chosen judge's check is shown beside it; 'Check judge' runs judge-check with that judge."""
    page, _, _ = page
    index = page.judge_combo.findText("Local: base")
    page.judge_combo.setCurrentIndex(index)
    page.judge_combo.activated.emit(index)  # what choosing it in the list does
    assert "not validated" in page.judge_status.text() and page.judge_status.isVisibleTo(page)
    base = page.project.get_model("base")
    add_check(page.project, f"local:base#{base['id']}|prefix='Score:'", valid=False)
    page.refresh()
    assert "failed its check" in page.judge_status.text() and "0.40" in page.judge_status.text()
    job = page.check_judge()
    params = page.project.get_job(job)["params"]
    assert page.project.get_job(job)["kind"] == "judge-check"
    assert params["judge"] == "local" and params["judge_model"] == "base" and "prompts" not in params
    page.bridge.cancel(job)
    assert page.tabs.tabText(page.tabs.count() - 1) == "Judges"
    assert page.check_button.text() == "Check again"  # the button follows the status


def test_submitting_a_sample_job_from_the_page(page, qtbot) -> None:
    from PySide6.QtCore import Qt

    page, runs, _ = page
    item = next(page.model_list.item(i) for i in range(page.model_list.count())
                if page.model_list.item(i).text().startswith("base"))  # fmt: skip
    item.setCheckState(Qt.CheckState.Checked)
    page.n_spin.setValue(1)
    page.tokens_spin.setValue(8)
    assert page.judge_params()["judge_model"] == "base"
    params = page.job_params("evaluate", page.selected_models()[0])
    assert (
        params["questions"] == "builtin" and params["judge"] == "local" and params["aligned_threshold"] == 30
    )
    (job,) = page.submit("sample")
    qtbot.waitUntil(lambda: page.project.get_job(job)["status"] in ("succeeded", "failed"), timeout=120_000)
    assert page.project.get_job(job)["status"] == "succeeded", page.project.get_job(job)["error"]
    qtbot.waitUntil(lambda: page.runs_table.rowCount() == 4, timeout=10_000)
    assert "sample" in page.status.text() or f"#{job}" in page.status.text()
