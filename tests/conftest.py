"""Shared fixtures. Every test runs offline, with per-user state in a temporary folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.builders import tiny_model_dir  # noqa: F401  (a session fixture shared by many test files)

# Hermetic: the suite behaves the same whatever hub or proxy settings the environment holds. huggingface_hub
# reads HF_* variables once, at import, so they are cleared here, before any test imports it; a test that
# wants one (a local hub's HF_ENDPOINT, offline mode) sets it itself.
for _name in list(os.environ):
    if _name.upper().startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_", "HF_DATASETS_")) or _name.lower() in (
        "http_proxy", "https_proxy", "all_proxy", "ftp_proxy"
    ):  # fmt: skip
        del os.environ[_name]
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,::1"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_EM = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "em"


@pytest.fixture(autouse=True, scope="session")
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["EMGUI_HOME"] = str(tmp_path_factory.mktemp("emgui-home"))
    os.environ["HF_HOME"] = str(tmp_path_factory.mktemp("hf-home"))  # never the user's own cache or token
    os.environ.setdefault("EMGUI_CACHE", str(tmp_path_factory.mktemp("emgui-cache")))


@pytest.fixture(autouse=True, scope="session")
def _test_job_kinds() -> None:
    from tests import jobkinds_for_tests

    jobkinds_for_tests.register()


@pytest.fixture(autouse=True)
def _collect_qt_garbage_in_the_main_thread():
    """Windows of finished tests sit in reference cycles. Were the cyclic garbage collector to free them
    later from a job's worker thread, Qt would destroy widgets off the GUI thread and deadlock against it.
    Free them here, in the main thread, after every test."""
    yield
    import gc

    app = None
    if "PySide6" in sys.modules:
        from PySide6.QtCore import QCoreApplication, QEvent

        app = QCoreApplication.instance()
        if app is not None:
            QCoreApplication.sendPostedEvents(None, QEvent.Type.DeferredDelete)
    gc.collect()


@pytest.fixture(autouse=True)
def _idle_models_freed():
    """Models one test left idle in the process's model host must not serve the next test (a shared
    session folder gives the same key): free them after every test."""
    yield
    host_module = sys.modules.get("emgui.core.models.host")
    if host_module is not None and host_module._default is not None:
        host_module._default.clear()


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one torch thread, and other suites share the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def window(qtbot, project):
    """The main window on `project`, offscreen; its jobs are stopped at teardown."""
    from emgui.ui.main_window import MainWindow

    win = MainWindow(project, probe_device=False)
    qtbot.addWidget(win)
    win.show()
    yield win
    if win.bridge is not None:
        win.bridge.shutdown(5)


@pytest.fixture
def project(tmp_path: Path):
    from emgui.core.project.store import Project

    proj = Project.create(tmp_path / "proj")
    yield proj
    proj.close()


@pytest.fixture
def judge_server():
    """An OpenAI-compatible judge endpoint on 127.0.0.1 (tests.builders.JudgeServer), closed at teardown."""
    from tests.builders import JudgeServer

    server = JudgeServer()
    yield server
    server.close()


@pytest.fixture
def shared_em() -> Path:
    if not SHARED_EM.is_dir():
        pytest.skip(
            f"the paper's data folder {SHARED_EM} is absent (it lives in ../shared, beside the repository)"
        )
    return SHARED_EM


def pytest_configure(config: pytest.Config) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
