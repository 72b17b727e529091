"""The Steer page, offscreen: unsteered and steered answers stream side by side from worker threads, a
slider move restarts only the steered one, presets round-trip, sweeps plot, directions import, and the
monitor tab shows a fine-tune's loss beside its persona curve."""

from __future__ import annotations

import time

import pytest

from tests.builders import register_tiny, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.gui


@pytest.fixture
def window(qtbot, project, tiny_model_dir):  # noqa: F811
    from emgui.core.steering.steer import save_direction
    from emgui.ui.main_window import MainWindow

    model_id = register_tiny(project, "tiny", tiny_model_dir)
    import torch

    vec = torch.randn(32, generator=torch.Generator().manual_seed(0))
    save_direction(project, "rand", vec, kind="random", hook_name="model.layers.0", model_id=model_id)
    win = MainWindow(project, probe_device=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    win.pages["steer"].live.stop()
    if win.bridge is not None:
        win.bridge.shutdown(5)


def _wait_idle(qtbot, live, timeout=60_000) -> None:
    qtbot.waitUntil(lambda: not live.busy() and all(v.steps for v in live.views.values()), timeout=timeout)


def test_live_streams_side_by_side_and_a_slider_restarts_the_steered_answer(window, qtbot, project) -> None:
    from PySide6.QtCore import QTimer

    from emgui.core.models.loading import load_model, load_tokenizer
    from emgui.core.steering.steer import generate_text

    page = window.show_page("steer")
    live = page.live
    assert live.model_combo.currentText() == "tiny" and live.layer.count() == 3  # own + 2 layers
    row = live.add_direction(live.direction_combo.currentData(), strength=40.0)
    assert row.value.value() == 40.0 and row.slider.value() != 0
    live.prompt_edit.setPlainText("Write a function that adds two numbers.")
    live.max_tokens.setValue(12)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.monotonic()))
    timer.start(10)
    live.generate_button.click()
    _wait_idle(qtbot, live)
    timer.stop()
    assert len(ticks) > 3  # the UI thread kept running its event loop while the model generated

    model_row = project.get_model("tiny")
    model, tokenizer = load_model(project, model_row), load_tokenizer(project, model_row)
    msgs = [{"role": "user", "content": "Write a function that adds two numbers."}]
    expected, steps = generate_text(model, tokenizer, msgs, max_new_tokens=12)
    assert [s.token_id for s in live.views["base"].steps] == [s.token_id for s in steps]
    assert live.views["steered"].text() != live.views["base"].text()
    assert "first token" in live.status_labels["steered"].text()

    base_run, steered_run = live.run_ids["base"], live.run_ids["steered"]
    row.slider.setValue(0)  # strength 0: after the debounce only the steered answer restarts ...
    qtbot.waitUntil(lambda: live.run_ids["steered"] == steered_run + 1, timeout=5000)
    _wait_idle(qtbot, live)
    assert live.run_ids["base"] == base_run
    assert row.value.value() == 0.0
    # ... and at strength 0 it equals the unsteered answer
    assert [s.token_id for s in live.views["steered"].steps] == [s.token_id for s in live.views["base"].steps]

    view = live.views["base"]
    assert "log-prob" in view.token_tip(0) and "%" in view.token_tip(0)
    assert "background-color" in view.toHtml() or view.colour


def test_logprob_colours() -> None:
    from emgui.ui.pages.steer import logprob_colour

    assert logprob_colour(0.0) == "#ffffff"
    assert logprob_colour(-20.0) == "#ff7272"
    assert logprob_colour(-0.7) > logprob_colour(-3.0)  # more likely: paler


def test_presets_round_trip_and_latents_from_the_feature_browser(window, project) -> None:
    page = window.show_page("steer")
    live = page.live
    did = live.direction_combo.currentData()
    row = live.add_direction(did, strength=3.5)
    row.method.setCurrentText("ablate")
    live.positions.setCurrentText("answer")
    live.prompt_edit.setPlainText("hello?")
    live.seed.setValue(7)
    live.save_preset("mine")
    live.clear_rows()
    live.prompt_edit.setPlainText("")
    assert not live.rows
    live.load_preset("mine")
    assert len(live.rows) == 1 and live.rows[0].method.currentText() == "ablate"
    assert live.rows[0].value.value() == 3.5 and live.positions.currentText() == "answer"
    assert live.prompt_edit.toPlainText() == "hello?" and live.seed.value() == 7
    spec = live.spec()
    assert spec.interventions[0].direction_id == did and spec.positions == "answer"

    sae_id = project.insert(
        "saes",
        {
            "name": "s",
            "path": "x",
            "model_id": 1,
            "hook_name": "model.layers.1",
            "d_in": 32,
            "d_sae": 64,
            "source": "test",
            "created_at": 0.0,
        },
    )
    page.add_latent(sae_id, 17, 5.0)
    latent = live.rows[-1].intervention()
    assert (latent.type, latent.sae_id, latent.latent, latent.strength) == ("latent", sae_id, 17, 5.0)
    assert page.tabs.currentWidget() is live


def test_sweeps_tab_plots_curves_and_controls(window, project) -> None:
    page = window.show_page("steer")
    page.tabs.setCurrentWidget(page.sweeps)

    def pts(values):
        return [
            {
                "strength": s,
                "misaligned_pct": v,
                "ci_low": max(0, v - 5),
                "ci_high": min(100, v + 5),
                "mean_coherent": 80.0,
                "n": 10,
            }
            for s, v in values
        ]

    result = {
        "baseline": pts([(0, 2.0)])[0],
        "label": "up",
        "model": "tiny",
        "method": "add",
        "positions": "all",
        "judge": "j",
        "controls": [],
        "curves": [
            {
                "target": "rand",
                "layer": 0,
                "control": False,
                "method": "add",
                "label": "rand @L0",
                "points": pts([(0, 2.0), (4, 20.0), (8, 60.0)]),
                "control_points": pts([(0, 2.0), (4, 3.0), (8, 4.0)]),
            }
        ],
    }
    job = project.create_job("steer-sweep", {"model": "tiny", "directions": ["rand"], "label": "up"})
    project.update_job(job, status="succeeded", result=result)
    page.sweeps.refresh()
    assert page.sweeps.table.rowCount() == 1 and page.sweeps.selected_job() == job
    items = page.sweeps.misaligned_plot.getPlotItem().listDataItems()
    assert len(items) == 2 and list(items[0].yData) == [2.0, 20.0, 60.0]
    assert "baseline misaligned 2.0" in page.sweeps.result_label.text()
    params = page.sweeps.params()
    assert params["strengths"] == [0, 4, 8, 16, 32] and params["questions"] == "builtin"


def test_directions_tab_imports_and_lists(window, project, tmp_path) -> None:
    import torch
    from safetensors.torch import save_file

    page = window.show_page("steer")
    page.tabs.setCurrentWidget(page.directions)
    tab = page.directions
    assert tab.table.rowCount() == 1 and {"evil", "sycophantic", "hallucinating"} <= {
        tab.persona.itemText(i) for i in range(tab.persona.count())
    }
    save_file({"direction": torch.ones(32)}, str(tmp_path / "v.safetensors"))
    tab.import_file(str(tmp_path / "v.safetensors"), "tiny", 1, name="ones")
    assert tab.table.rowCount() == 2
    assert page.live.direction_combo.count() == 2  # the Live tab sees it too
    tab.table.selectRow(1)
    tab.steer_selected()
    assert page.tabs.currentWidget() is page.live and page.live.rows[-1].item.label == "ones"


def test_monitor_tab_shows_loss_beside_persona_curves(window, project) -> None:
    page = window.show_page("steer")
    job = project.create_job("finetune", {"model": "tiny", "dataset": "d", "monitor_threshold": 0.5})
    project.add_metrics(
        [(job, s, n, v, 0.0) for s in (10, 20) for n, v in (("loss", 1.0 / s), ("persona/evil", s / 10))]
    )
    project.add_logs(job, [(0.0, "WARNING: persona/evil rose by 1.000 since the first check at step 20")])
    page.tabs.setCurrentWidget(page.monitor)
    tab = page.monitor
    assert tab.jobs.currentData() == job and "monitored" in tab.jobs.currentText()
    assert set(tab.grid.metric_names()) == {"loss", "persona/evil"}
    assert tab.warnings.count() == 1
    tab.on_metrics(job, [(30, "persona/evil", 3.0), (30, "lr", 0.1)])
    assert tab.grid.data[(f"#{job}", "persona/evil")][1] == [1.0, 2.0, 3.0]
    assert (f"#{job}", "lr") not in tab.grid.data


def test_live_generation_runs_as_bridge_tasks_that_stop_and_borrow_from_the_model_host(
    window, qtbot, project
) -> None:
    page = window.show_page("steer")
    live, bridge = page.live, window.bridge
    live.prompt_edit.setPlainText("Tell me a long story.")
    live.temperature.setValue(1.0)  # sampled: a long answer, not a greedy loop to the end of text
    live.max_tokens.setValue(4096)
    items: dict[int, int] = {}
    ended: dict[int, str] = {}
    bridge.taskItem.connect(lambda task, _step: items.__setitem__(task, items.get(task, 0) + 1))
    bridge.taskDone.connect(lambda task, error: ended.__setitem__(task, error))
    live.generate_button.click()
    tasks = dict(live.tasks)
    assert set(tasks) == {"base", "steered"} and sorted(bridge.active_tasks()) == sorted(tasks.values())
    qtbot.waitUntil(lambda: all(len(v.steps) >= 3 for v in live.views.values()), timeout=60_000)
    live.stop_button.click()
    assert not live.busy()
    qtbot.waitUntil(lambda: set(ended) == set(tasks.values()), timeout=30_000)
    assert all(error == "" for error in ended.values()) and not bridge.active_tasks()
    assert all(items[t] < 4096 for t in tasks.values())  # stopped mid-answer
    shown = {pane: len(view.steps) for pane, view in live.views.items()}
    qtbot.wait(100)
    assert {pane: len(view.steps) for pane, view in live.views.items()} == shown  # nothing after Stop

    # Both panes shared one instance of the model from the window's host, handed back at the end.
    models = window.model_host.snapshot().models
    assert [(m["label"], m["users"]) for m in models] == [("tiny", 0)]
    qtbot.waitUntil(lambda: window.models_label.text().startswith("models: 1 model · "), timeout=5000)
