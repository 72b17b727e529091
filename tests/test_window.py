"""The window at a laptop's size: every page fits 1280x800 without scrolling, forms come from the kinds'
declared parameters, empty plots explain themselves, disabled actions say why, and jobs of another process
are counted in the status bar."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import register_tiny, tiny_chats, tiny_model_dir, write_chats  # noqa: F401

pytestmark = pytest.mark.gui
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def styled_window(qtbot, project, tiny_model_dir):  # noqa: F811
    """The window as `emgui` shows it (style sheet included), at 1280x800, on a project with a model
    and two chat datasets."""
    from emgui.ui.app import make_app
    from emgui.ui.main_window import MainWindow

    make_app()
    register_tiny(project, "tiny", tiny_model_dir)
    for name in ("insecure", "secure"):
        path = write_chats(project.root / f"{name}.jsonl", tiny_chats(4))
        project.add_dataset(name=name, kind="chat", path=path, n_rows=4)
    win = MainWindow(project, probe_device=False)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    if win.bridge is not None:
        win.bridge.shutdown(5)


def test_every_page_fits_1280x800_without_scrolling(styled_window, qtbot) -> None:
    from emgui.ui.main_window import PAGES

    for key, *_ in PAGES:
        page = styled_window.show_page(key)
        qtbot.wait(20)
        scroll = styled_window.stack.currentWidget()
        scroll.fit()
        assert not scroll.horizontalScrollBar().isVisible(), f"{key} scrolls sideways"
        assert not scroll.verticalScrollBar().isVisible(), f"{key} scrolls down at 1280x800"
        assert page.width() <= scroll.viewport().width() and page.height() <= scroll.viewport().height(), key
    # A smaller window scrolls a page instead of clipping it.
    styled_window.resize(800, 500)
    page = styled_window.show_page("evaluate")
    qtbot.wait(20)
    scroll = styled_window.stack.currentWidget()
    scroll.fit()
    assert page.height() >= page.minimumSizeHint().height() and scroll.verticalScrollBar().maximum() > 0


def test_param_form_takes_defaults_ranges_and_help_from_the_declaration(qtbot, project) -> None:
    from PySide6.QtWidgets import QDoubleSpinBox, QSpinBox

    from emgui.core.jobs.kinds import get_kind
    from emgui.ui.forms import ParamForm, apply_spec

    form = ParamForm("finetune", project)
    qtbot.addWidget(form)
    kind = get_kind("finetune")
    assert set(form.fields) == {s.name for s in kind.params}
    front = {n for n, f in form.fields.items() if not form.advanced.isAncestorOf(f.widget)}
    assert front == {s.name for s in kind.params if s.key}
    lora_r = form.fields["lora_r"].widget
    assert isinstance(lora_r, QSpinBox) and lora_r.value() == 8 and lora_r.minimum() == 1
    assert "LoRA rank" in lora_r.toolTip() and "default: 8" in lora_r.toolTip()
    assert form.value("lr") == 1e-4 and form.fields["lr"].widget.text() == "0.0001"
    assert form.value("max_steps") is None and form.fields["max_steps"].widget.text() == "automatic"
    assert form.values() == {}  # at their defaults; the empty required ones are named when submitted
    form.set_value("lr", 3e-4)
    form.set_value("max_steps", 5)
    form.set_value("layers", [1, 2])
    assert form.values() == {"lr": 3e-4, "max_steps": 5, "layers": ["1", "2"]}
    form.fields["lr"].widget.stepBy(1)  # learning rates step by doubling
    assert form.value("lr") == pytest.approx(6e-4)
    spin = QDoubleSpinBox()
    apply_spec(spin, "evaluate", "top_p")
    assert (spin.minimum(), spin.maximum(), spin.value()) == (0.0, 1.0, 1.0) and "Nucleus" in spin.toolTip()


def test_train_page_refuses_bad_values_without_a_job_row_and_starts_good_ones(
    styled_window, project, qtbot, monkeypatch
) -> None:
    from emgui.ui import forms

    errors = []
    monkeypatch.setattr(forms, "show_error", lambda parent, title, text: errors.append(text))
    train = styled_window.show_page("train")
    form = train.finetune.form
    assert form.value("model") == "tiny" and form.value("dataset") == "insecure"  # the demo's bad data
    form.fields["layers"].edit.setText("a, b")
    train.finetune.start_button.click()
    assert errors and "parameter 'layers' must be a list of ints" in errors[0]
    assert project.list_jobs() == [] and styled_window.current_page() is train
    form.fields["layers"].edit.setText("")
    form.set_value("max_steps", 1)
    form.set_value("max_len", 128)
    train.finetune.start_button.click()
    job = project.list_jobs("finetune")[-1]
    assert styled_window.current_page() is styled_window.pages["jobs"]
    assert styled_window.pages["jobs"].selected_id == job["id"]
    assert job["params"]["max_steps"] == 1 and job["params"]["method"] == "lora"
    def finished() -> bool:
        row = project.get_job(job["id"])
        assert row["status"] not in ("failed", "cancelled"), row["error"]
        return row["status"] == "succeeded"

    qtbot.waitUntil(finished, timeout=120_000)
    # Re-alignment offers both kinds of good data; a missing one says how to add it.
    train = styled_window.show_page("train")
    assert train.good_buttons["secure"].isEnabled() and not train.good_buttons["helpful"].isEnabled()
    assert "generated:helpful" in train.good_buttons["helpful"].toolTip()
    assert train.realign.form.value("model") == project.list_models()[-1]["name"]  # the newest fine-tune


def test_empty_plots_explain_and_disabled_actions_say_why(styled_window) -> None:
    from emgui.ui.plots import EmptyState, is_empty

    evaluate = styled_window.show_page("evaluate")
    assert is_empty(evaluate.bar_plot) and is_empty(evaluate.scatter) and is_empty(evaluate.realign_plot)
    assert "No evaluation yet" in evaluate.bar_plot.findChild(EmptyState).text()
    assert "Train page" in evaluate.realign_plot.findChild(EmptyState).text()
    jobs = styled_window.show_page("jobs")
    assert is_empty(jobs.plots.view) and "No curves yet" in jobs.plots.view.findChild(EmptyState).text()
    features = styled_window.show_page("features")
    assert not features.diff_button.isEnabled() and "Choose an SAE first" in features.diff_button.toolTip()
    assert not features.dash_button.isEnabled() and "SAEs tab" in features.dash_button.toolTip()


def test_jobs_of_another_process_are_counted_in_the_status_bar(styled_window, project, qtbot, tmp_path) -> None:
    marker = tmp_path / "running"
    code = (
        f"import sys; sys.path.insert(0, {str(REPO)!r}); from tests import jobkinds_for_tests as k; k.register()\n"
        f"from emgui.cli import main; main(['run', {str(project.root)!r}, 'test-count-light', '--param', 'steps=400',"
        f" '--param', 'delay=0.05', '--param', 'marker={marker}'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        qtbot.waitUntil(marker.exists, timeout=60_000)
        styled_window.refresh_status()
        assert "1 job running (1 started elsewhere" in styled_window.jobs_label.text()
        jobs = styled_window.show_page("jobs")
        qtbot.waitUntil(lambda: jobs.table.rowCount() == 1, timeout=5000)
        row = jobs.row_of(project.list_jobs()[0]["id"])
        qtbot.waitUntil(lambda: jobs.table.cellWidget(row, 3).value() > 0, timeout=10_000)  # its progress, live
    finally:
        proc.terminate()
        proc.wait(30)


def test_train_page_shows_the_submit_checks_memory_estimate(styled_window, project, monkeypatch) -> None:
    """The fine-tune form shows emgui.core.models.memory's estimate, the one the submit check uses: method-aware,
    against the free memory, and with the settings that would fit when Start will be refused."""
    from emgui.ui import forms

    errors = []
    monkeypatch.setattr(forms, "show_error", lambda parent, title, text: errors.append(text))
    train = styled_window.show_page("train")
    card = train.finetune
    assert card.memory.text().startswith("Memory needed: about") and "LoRA adapter" in card.memory.text()
    assert "free" in card.memory.text()
    card.form.set_value("method", "qlora")
    card.update_state()
    assert "QLoRA, 4-bit base" in card.memory.text()
    monkeypatch.setenv("EMGUI_FREE_MEMORY", str(1e6))  # 1 MB free: nothing fits
    card.form.set_value("method", "full")
    card.update_state()
    assert "It will not fit, and Start will be refused" in card.memory.text()
    card.start_button.click()
    assert errors and "will not fit" in errors[-1] and project.list_jobs() == []
