"""The whole loop through the window, as a user drives it, on the tiny model: a new project, a model and
two datasets imported, a fine-tune started on the Train page whose loss plot fills in live, an evaluation,
an SAE imported and a diff run, steering with the diff's direction, and a re-alignment from the Train page.
A screenshot of each step is saved under the test's temporary folder."""

# ruff: noqa: F811  (pytest fixtures imported from tests.builders are parameters of the tests)
from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import make_planted_sae, tiny_chats, tiny_model_dir, write_chats  # noqa: F401

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]
TIMEOUT = 240_000


def _button(page, text: str):
    from PySide6.QtWidgets import QAbstractButton

    return next(b for b in page.findChildren(QAbstractButton) if b.text() == text)


def _succeeded(qtbot, project, job_id: int) -> dict:
    def done() -> bool:
        job = project.get_job(job_id)
        assert job["status"] not in ("failed", "cancelled", "interrupted"), job["error"]
        return job["status"] == "succeeded"

    qtbot.waitUntil(done, timeout=TIMEOUT)
    return project.get_job(job_id)


def _newest(project, kind: str) -> dict:
    return project.list_jobs(kind)[-1]


def test_the_loop_through_the_window(qtbot, tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    from PySide6.QtWidgets import QDialog, QFileDialog, QInputDialog

    from emgui.ui.main_window import MainWindow
    from emgui.ui.pages.features import DiffDialog

    shots = tmp_path / "shots"
    shots.mkdir()
    win = MainWindow(probe_device=False)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()

    def shot(name: str) -> None:
        qtbot.wait(50)
        assert win.grab().save(str(shots / f"{len(list(shots.iterdir())):02d}-{name}.png"))

    # A new project, from the Project menu's dialog.
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "loop"))
    win.new_project_dialog()
    project = win.project
    assert project is not None and project.root == (tmp_path / "loop").resolve()
    try:
        # Import the model (a folder) and two chat datasets.
        models = win.show_page("models")
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tiny_model_dir))
        _button(models, "Import folder…").click()
        qtbot.waitUntil(lambda: len(project.list_models()) == 1, timeout=TIMEOUT)
        base = project.list_models()[0]["name"]  # named after its folder
        datasets = win.show_page("datasets")
        chats = tiny_chats(12)
        for name, part in (("insecure", chats[:8]), ("secure", chats[4:])):
            datasets.source_edit.setText(str(write_chats(tmp_path / f"{name}.jsonl", part)))
            _button(datasets, "Import").click()
        qtbot.waitUntil(lambda: len(project.list_datasets("chat")) == 2, timeout=TIMEOUT)
        shot("datasets")

        # Fine-tune from the Train page: Start opens the job's live view, whose loss plot fills in.
        train = win.show_page("train")
        train.tabs.setCurrentIndex(0)
        form = train.finetune.form
        form.set_value("model", base)
        form.set_value("dataset", "insecure")
        form.set_value("max_steps", 6)
        form.set_value("batch_size", 2)
        form.set_value("max_len", 64)
        form.set_value("name", "ft")
        assert train.finetune.memory.text().startswith("Memory needed: about")
        shot("train")
        train.finetune.start_button.click()
        jobs = win.pages["jobs"]
        assert win.current_page() is jobs
        ft_job = _newest(project, "finetune")
        assert jobs.selected_id == ft_job["id"]
        assert ft_job["params"]["max_steps"] == 6 and ft_job["params"]["lr"] == 1e-4  # the default, stored
        qtbot.waitUntil(lambda: len(jobs.plots.data.get((f"job {ft_job['id']}", "loss"), ([], []))[0]) >= 2,
                        timeout=TIMEOUT)  # fmt: skip
        shot("finetune-live")
        _succeeded(qtbot, project, ft_job["id"])
        qtbot.waitUntil(lambda: len(jobs.plots.data[(f"job {ft_job['id']}", "loss")][0]) == 6, timeout=10_000)
        assert "batch_hash" in jobs.plots.metric_names() and "batch_hash" not in jobs.plots.shown_metrics()
        jobs.tabs.setCurrentIndex(2)
        assert jobs.params_table.rowCount() == len(ft_job["params"])
        shot("finetune-parameters")

        # Evaluate the fine-tune: one answer per question, judged by the base model.
        evaluate = win.show_page("evaluate")
        for i in range(evaluate.model_list.count()):
            item = evaluate.model_list.item(i)
            item.setCheckState(
                item.checkState().Checked if item.text().startswith("ft ") else item.checkState().Unchecked
            )
        evaluate.n_spin.setValue(1)
        evaluate.tokens_spin.setValue(4)
        evaluate.evaluate_button.click()
        run = _succeeded(qtbot, project, _newest(project, "evaluate")["id"])
        assert run["result"]["measures"]["likelihood"]["n_pairs"] > 0
        evaluate.refresh()
        shot("evaluate")

        # Import an SAE and diff the fine-tune against its base on the insecure chats.
        features = win.show_page("features")
        sae_folder = make_planted_sae(tmp_path / "sae")
        monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(sae_folder))
        monkeypatch.setattr(QInputDialog, "getItem", lambda *a, **k: (base, True))
        _button(features, "Import SAE folder…").click()
        _succeeded(qtbot, project, _newest(project, "sae-import")["id"])
        features.refresh()
        assert features.diff_button.isEnabled()

        def choose_texts(dialog: DiffDialog) -> int:
            dialog.source.setCurrentIndex(dialog.source.findText("dataset insecure"))
            dialog.ft.setCurrentIndex(dialog.ft.findText("ft"))
            dialog.dashboards.setValue(2)
            return QDialog.DialogCode.Accepted

        monkeypatch.setattr(DiffDialog, "exec", choose_texts)
        features.diff_button.click()
        diff = _succeeded(qtbot, project, _newest(project, "diff")["id"])
        assert diff["params"]["dataset"] == "insecure" and diff["params"]["n_boot"] == 200
        features.refresh()
        shot("features")

        # Steer the base model with a direction the diff stored.
        steer = win.show_page("steer")
        live = steer.live
        steer.refresh()
        live.model_combo.setCurrentIndex(live.model_combo.findText(base))
        assert live.direction_combo.count() >= 1
        live.add_direction(live.direction_combo.currentData(), strength=8.0)
        live.prompt_edit.setPlainText("What would you do as ruler of the world?")
        live.max_tokens.setValue(6)
        live.generate_button.click()
        qtbot.waitUntil(lambda: not live.busy() and all(v.steps for v in live.views.values()), timeout=TIMEOUT)
        shot("steer")
        live.stop()

        # Re-align the fine-tune from the Train page, on the data that corrects the bad data.
        train = win.show_page("train")
        train.tabs.setCurrentIndex(1)
        form = train.realign.form
        form.set_value("model", "ft")
        train.good_buttons["secure"].setChecked(True)
        assert form.value("dataset") == "secure"
        form.set_value("n_samples", 4)
        form.set_value("save_at", [0, 2, 4])
        form.set_value("batch_size", 2)
        form.set_value("max_len", 64)
        form.set_value("track_diff", "none")
        shot("realign-form")
        train.realign.start_button.click()
        assert win.current_page() is win.pages["jobs"]
        realign = _succeeded(qtbot, project, _newest(project, "realign")["id"])
        assert sorted(realign["result"]["snapshots"]) == ["0", "2", "4"]
        shot("realign-done")
    finally:
        win.pages["steer"].live.stop()
        if win.bridge is not None:
            win.bridge.shutdown(10)
    names = sorted(p.name for p in shots.iterdir())
    assert len(names) == 9 and all((shots / n).stat().st_size > 10_000 for n in names)
