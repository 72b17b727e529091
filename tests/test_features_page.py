"""The Features page on real data: a diff job's ranking, dashboards opening fast with per-token values,
search/filter/sort, labels, export, the text box, and live SAE training curves."""

# ruff: noqa: F811  (pytest fixtures imported from tests.builders are parameters of the tests)
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emgui.core.features import dashboards as D
from emgui.core.features import latents as L
from emgui.core.project.store import Project
from tests.builders import D_SAE, PLANTED, build_diff_project, tiny_chats, tiny_model_dir, write_chats  # noqa: F401

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def window(window):
    """conftest's window; then the model the text box keeps loaded is let go."""
    yield window
    D.release_live()


def _listed(page, key: str = "latent") -> list:
    return [row[key] for row in page.model.rows]


def _tooltips(browser) -> list[str]:
    """The tooltips (token = value) of the spans in a QTextBrowser's document."""
    tips = []
    block = browser.document().begin()
    while block.isValid():
        it = block.begin()
        while not it.atEnd():
            tip = it.fragment().charFormat().toolTip()
            if tip:
                tips.append(tip)
            it += 1
        block = block.next()
    return tips


def test_browser_ranks_opens_dashboards_labels_and_exports(
    window, project: Project, tiny_model_dir: Path, qtbot, tmp_path: Path
) -> None:
    from PySide6.QtCore import Qt, QUrl

    setup = build_diff_project(project, tiny_model_dir, dashboards=8)
    page = window.show_page("features")
    page.refresh()
    assert page.sae["id"] == setup["sae_id"] and page.diff_job == setup["job"]
    assert page.model.rowCount() == D_SAE and page.count_label.text() == f"{D_SAE} of {D_SAE} latents"
    assert _listed(page)[0] == PLANTED  # sorted by rank

    from emgui.ui.pages.features import COLUMNS

    page.table.sortByColumn([c[1] for c in COLUMNS].index("delta_freq"), Qt.SortOrder.DescendingOrder)
    freqs = _listed(page, "delta_freq")
    assert freqs == sorted(freqs, reverse=True)

    assert page.select_latent(PLANTED)
    assert page.latent == PLANTED and page.open_ms is not None and page.open_ms < 200
    text = page.view.toPlainText()
    assert "Top activations" in text and "Nearest latents" in text and "rank 1" in text
    tips = _tooltips(page.view)
    dash = L.get_dashboard(project, setup["sae_id"], PLANTED)
    first = dash["top"][0]
    assert f"{first['tokens'][first['peak']]} = {first['max']:.4g}" in tips
    assert page.build_one.isHidden()

    page.label_edit.setText("persona latent")
    page.note_edit.setPlainText("grows on every answer")
    page.save_label()
    assert L.get_labels(project, setup["sae_id"])[PLANTED] == {
        "label": "persona latent",
        "note": "grows on every answer",
    }
    page.search.setText("persona")
    assert _listed(page) == [PLANTED]
    page.search.setText("every answer")  # notes are searched too
    assert _listed(page) == [PLANTED]
    page.search.setText("#1")
    assert _listed(page) and all(str(v).startswith("1") for v in _listed(page))
    page.search.clear()
    page.filter_combo.setCurrentIndex(1)  # with dashboard
    assert len(_listed(page)) == 8
    page.filter_combo.setCurrentIndex(2)  # labelled
    assert _listed(page) == [PLANTED]
    page.filter_combo.setCurrentIndex(0)

    out = tmp_path / "all.csv"
    assert page.export_to(str(out)) == D_SAE
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["latent"] == str(PLANTED) and rows[0]["label"] == "persona latent"
    page.filter_combo.setCurrentIndex(1)
    assert page.export_to(str(tmp_path / "dash.json")) == 8
    assert len(json.loads((tmp_path / "dash.json").read_text())["latents"]) == 8
    page.filter_combo.setCurrentIndex(0)

    no_dash = next(r["latent"] for r in page.model.rows if not r["has_dashboard"])
    page.view.anchorClicked.emit(QUrl(f"latent:{no_dash}"))  # a click on a neighbour link
    assert page.latent == no_dash and not page.build_one.isHidden()
    assert "No dashboard" in page.view.toPlainText()

    page.select_latent(PLANTED)
    page.try_edit.setText("def f3(x):\n    return x + 3")
    page.try_text()
    qtbot.waitUntil(lambda: "max" in page.try_view.toPlainText(), timeout=60000)
    assert any(t.startswith("def = ") for t in _tooltips(page.try_view))


def test_training_curves_show_live(window, project: Project, tiny_model_dir: Path, qtbot) -> None:
    from tests.builders import register_tiny

    register_tiny(project, folder=tiny_model_dir)
    path = write_chats(project.root.parent / "chats.jsonl", tiny_chats(20))
    project.add_dataset(name="chats", kind="chat", path=path, n_rows=20)
    page = window.show_page("features")
    page.refresh()
    assert "Run a diff" in page.view.toPlainText() or "Train, import" in page.view.toPlainText()
    page.tabs.setCurrentIndex(1)
    params = {
        "model": "tiny", "hook": "model.layers.1", "datasets": ["chats"], "d_sae": 32, "k": 4,
        "tokens": 80 * 128, "batch_size": 128, "lr": 3e-3, "ce_sequences": 0,
    }  # fmt: skip
    job = page.start_training(params)
    qtbot.waitUntil(lambda: project.get_job(job)["status"] == "succeeded", timeout=90000)
    qtbot.waitUntil(lambda: page.sae_table.rowCount() == 1, timeout=10000)
    assert {"loss", "l0", "explained_variance", "dead_fraction"} <= set(page.plots.metric_names())
    xs, _ = page.plots.data[(f"#{job}", "loss")]
    assert len(xs) >= 10 and xs == sorted(xs)
    assert page.sae_table.item(0, 1).text() == "trained" and page.sae_table.item(0, 7).text() != ""
