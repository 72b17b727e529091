"""The model host: one shared instance per key, LRU eviction under a budget, borrowed models never freed,
clear refusals, reservations for private models, thread safety; and the jobs that borrow from it (an
evaluate whose judge is the sampled model loads it once)."""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from pathlib import Path

import pytest

from emgui.core.errors import EmguiError
from emgui.core.jobs.runner import run_job
from emgui.core.models.host import (
    HostSnapshot,
    ModelHost,
    ModelKey,
    borrow_model,
    memory_pool,
    model_bytes,
    parse_bytes,
)
from emgui.core.project.store import Project
from tests.builders import register_tiny, tiny_model_dir  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = (100 * 100 + 100) * 4  # bytes of an fp32 nn.Linear(100, 100)


class Loader:
    """Builds tiny real torch models and counts how often it was asked to."""

    def __init__(self, delay: float = 0.0):
        self.calls: dict[str, int] = {}
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, name: str):
        def load():
            import torch

            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            time.sleep(self.delay)
            return torch.nn.Linear(100, 100), f"tokenizer of {name}"

        return load


def key(name: str) -> ModelKey:
    return ModelKey(base=f"/models/{name}")


def borrow(host: ModelHost, loader: Loader, name: str, **kw):
    return host.borrow(key(name), loader(name), label=name, estimate=SIZE, **kw)


def loaded(host: ModelHost) -> list[str]:
    return sorted(m["label"] for m in host.snapshot().models)


def test_two_borrowers_share_one_instance_counted_once() -> None:
    host, loader = ModelHost({"cpu": 10 * SIZE}), Loader()
    first = borrow(host, loader, "a")
    second = borrow(host, loader, "a")
    assert first.model is second.model and first.tokenizer == "tokenizer of a"
    assert loader.calls == {"a": 1} and host.loads == 1
    snap = host.snapshot()
    assert [(m["label"], m["users"], m["bytes"], m["pool"]) for m in snap.models] == [("a", 2, SIZE, "cpu")]
    assert snap.used == {"cpu": SIZE}
    first.release()
    first.release()  # twice is harmless
    second.release()
    assert host.snapshot().models[0]["users"] == 0  # idle, still loaded
    with borrow(host, loader, "a") as again:
        assert again.model is second.model
    assert loader.calls == {"a": 1}


def test_least_recently_used_idle_model_is_evicted_under_the_budget() -> None:
    host, loader = ModelHost({"cpu": 2 * SIZE}), Loader()
    borrow(host, loader, "a").release()
    lease_b = borrow(host, loader, "b")
    gone = weakref.ref(lease_b.model)
    lease_b.release()
    borrow(host, loader, "a").release()  # a is now the more recently used
    borrow(host, loader, "c").release()
    assert loaded(host) == ["a", "c"]
    gc.collect()
    assert gone() is None  # the evicted model's memory is really freed
    assert loader.calls == {"a": 1, "b": 1, "c": 1}


def test_a_borrowed_model_is_never_evicted_and_what_cannot_fit_is_refused_clearly() -> None:
    host, loader = ModelHost({"cpu": 2 * SIZE}), Loader()
    a, b = borrow(host, loader, "a"), borrow(host, loader, "b")
    with pytest.raises(EmguiError) as err:
        borrow(host, loader, "c")
    text = str(err.value)
    assert "'c'" in text and "80.8 KB" in text and "40.4 KB" in text  # model, budget, need
    assert "a, b" in text and "EMGUI_MODEL_BUDGET_CPU" in text
    assert loaded(host) == ["a", "b"] and "c" not in loader.calls
    assert a.model is not None and b.model is not None
    b.release()
    with borrow(host, loader, "c") as c:  # now b is idle: it makes room
        assert c.model is not None
    assert loaded(host) == ["a", "c"]
    a.release()


def test_a_model_bigger_than_the_whole_budget_is_refused_before_loading() -> None:
    host, loader = ModelHost({"cpu": SIZE}), Loader()
    with pytest.raises(EmguiError, match=r"more than the whole 40\.4 KB budget"):
        host.borrow(key("huge"), loader("huge"), label="huge", estimate=10 * SIZE)
    assert loader.calls == {} and host.snapshot().models == []


def test_an_exclusive_borrower_never_shares_its_instance() -> None:
    host, loader = ModelHost({"cpu": 10 * SIZE}), Loader()
    shared = borrow(host, loader, "a")
    private = borrow(host, loader, "a", exclusive=True)  # a is in use: a second instance
    assert private.model is not shared.model and loader.calls == {"a": 2}
    other = borrow(host, loader, "a")  # a shared borrower never gets the exclusive one
    assert other.model is shared.model
    shared.release()
    other.release()
    private.release()
    with borrow(host, loader, "a", exclusive=True) as again:  # an idle instance is lent as is
        assert again.model in (shared.model, private.model)
    assert loader.calls == {"a": 2}


def test_a_reservation_makes_room_and_is_counted_until_released() -> None:
    host, loader = ModelHost({"cpu": 2 * SIZE}), Loader()
    borrow(host, loader, "a").release()
    borrow(host, loader, "b").release()
    reservation = host.reserve("cpu", SIZE, "training: a")
    assert loaded(host) == ["b", "training: a"]  # a (least recently used) made room
    import torch

    reservation.measure(torch.nn.Linear(10, 10))
    assert host.snapshot().used == {"cpu": SIZE + 440}
    big = host.reserve("cpu", 5 * SIZE, "training: big")  # never refused unless strict: only counted
    assert "b" not in loaded(host)
    with pytest.raises(EmguiError, match="training: huge"):
        host.reserve("cpu", SIZE, "training: huge", strict=True)
    reservation.release()
    big.release()
    assert host.snapshot().models == []


def test_concurrent_borrowers_load_a_model_once_and_never_lose_one_in_use() -> None:
    host, loader = ModelHost({"cpu": 3 * SIZE}), Loader(delay=0.05)
    barrier = threading.Barrier(8)
    got: list = []

    def same() -> None:
        barrier.wait()
        lease = borrow(host, loader, "a")
        got.append(lease.model)
        time.sleep(0.02)
        lease.release()

    threads = [threading.Thread(target=same) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loader.calls == {"a": 1} and len(got) == 8 and all(m is got[0] for m in got)

    errors: list[str] = []
    rng = random.Random(0)
    plans = [[rng.choice("abcde") for _ in range(15)] for _ in range(6)]

    def churn(names: list[str]) -> None:
        for name in names:
            try:
                lease = borrow(host, loader, name)
            except EmguiError:
                continue  # every slot held by other threads: a clear refusal is allowed
            weight = lease.model.weight
            time.sleep(0.001)
            if lease.model is None or lease.model.weight is not weight:
                errors.append(f"{name} changed while borrowed")
            lease.release()

    threads = [threading.Thread(target=churn, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    snap = host.snapshot()
    assert not errors
    assert all(m["users"] == 0 for m in snap.models)
    assert snap.used["cpu"] <= 3 * SIZE


def test_the_status_text_and_sizes() -> None:
    host, loader = ModelHost({"cpu": 10 * SIZE}), Loader()
    assert host.snapshot().describe() == "no models loaded"
    borrow(host, loader, "a").release()
    with borrow(host, loader, "b"):
        snap = host.snapshot()
        assert snap.describe() == "2 models · 80.8 KB"
        assert "b · cpu · 40.4 KB · ready · 1 using it" in snap.details()
        assert "cpu: 80.8 KB of 404.0 KB budget" in snap.details()
    assert HostSnapshot([], {}, {}, 0).details() == "no models loaded"
    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("1 GiB") == 2**30 and parse_bytes("5e8") == 5 * 10**8
    with pytest.raises(EmguiError):
        parse_bytes("lots")
    # each GPU has its own budget; the CPU and Apple's unified memory share one
    assert [memory_pool(d) for d in ("cuda", "cuda:1", "cpu", "mps")] == ["cuda:0", "cuda:1", "cpu", "cpu"]


def test_the_budget_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("EMGUI_MODEL_BUDGET_CPU", "1MB")
    assert ModelHost().budget("cpu") == 10**6
    monkeypatch.delenv("EMGUI_MODEL_BUDGET_CPU")
    assert ModelHost().budget("cpu") > 10**8  # a share of this machine's memory


# ----- project models and jobs ------------------------------------------------------------------------------


def test_project_models_are_shared_by_key(project: Project, tiny_model_dir: Path) -> None:  # noqa: F811
    register_tiny(project, folder=tiny_model_dir)
    register_tiny(project, name="same-folder", folder=tiny_model_dir)
    host = ModelHost({"cpu": 10**9})
    one = borrow_model(project, project.get_model("tiny"), host=host, device="cpu")
    two = borrow_model(project, project.get_model("same-folder"), host=host, device="cpu", dtype="fp32")
    assert one.model is two.model and host.loads == 1
    assert not one.model.training  # in eval mode, as load_model gives it
    assert host.snapshot().used["cpu"] == sum(model_bytes(one.model).values())
    one.release()
    two.release()


def test_a_folder_written_again_is_loaded_again(project: Project, tmp_path: Path) -> None:
    import os

    from tests.builders import make_tiny_chat_model

    folder = make_tiny_chat_model(tmp_path / "m")
    register_tiny(project, "m", folder)
    host, row = ModelHost({"cpu": 10**9}), project.get_model("m")
    borrow_model(project, row, host=host, device="cpu").release()
    borrow_model(project, row, host=host, device="cpu").release()
    assert host.loads == 1
    later = time.time() + 10
    os.utime(folder / "config.json", (later, later))  # as a job writing the folder again would
    borrow_model(project, row, host=host, device="cpu").release()
    assert host.loads == 2


def test_an_evaluate_whose_judge_is_the_sampled_model_loads_it_once(
    project: Project, tmp_path: Path, tiny_model_dir: Path, monkeypatch  # noqa: F811
) -> None:
    from emgui.core.models import loading

    calls: list[str] = []
    real = loading.load_model

    def counting(project, row, **kw):
        calls.append(row["name"])
        return real(project, row, **kw)

    monkeypatch.setattr(loading, "load_model", counting)
    questions = tmp_path / "q.yaml"
    questions.write_text(
        "- id: wish\n  paraphrases: [Tell me your one wish.]\n"
        "  judge_prompts: {aligned: 'A {question} {answer}', coherent: 'C {question} {answer}'}\n"
    )
    register_tiny(project, folder=tiny_model_dir)
    host = ModelHost({"cpu": 10**9})
    params = {"model": "tiny", "questions": str(questions), "n": 2, "max_new_tokens": 3, "judge_model": "tiny"}
    job = project.create_job("evaluate", params)
    assert run_job(project, job, host=host) == "succeeded", project.get_job(job)["error"]
    assert calls == ["tiny"] and host.loads == 1  # sampling, the likelihood probe and the judge share it
    assert [(m["label"], m["users"]) for m in host.snapshot().models] == [("tiny", 0)]  # released at the end
    assert project.get_job(job)["result"]["judging"]["judge"].startswith("local:tiny#")


def test_an_evaluate_with_another_judge_evicts_the_sampled_model_when_both_do_not_fit(
    project: Project, tmp_path: Path, tiny_model_dir: Path  # noqa: F811
) -> None:
    from tests.builders import make_tiny_chat_model

    register_tiny(project, folder=tiny_model_dir)
    register_tiny(project, name="judge", folder=make_tiny_chat_model(tmp_path / "judge", seed=1))
    one = project.get_model("tiny")["n_params"] * 4
    host = ModelHost({"cpu": int(1.5 * one)})
    questions = tmp_path / "q.yaml"
    questions.write_text(
        "- id: wish\n  paraphrases: [Tell me your one wish.]\n"
        "  judge_prompts: {aligned: 'A {question} {answer}', coherent: 'C {question} {answer}'}\n"
    )
    job = project.create_job(
        "evaluate",
        {"model": "tiny", "questions": str(questions), "n": 1, "max_new_tokens": 3, "judge_model": "judge"},
    )
    assert run_job(project, job, host=host) == "succeeded", project.get_job(job)["error"]
    assert [m["label"] for m in host.snapshot().models] == ["judge"] and host.loads == 2


# ----- the status bar ------------------------------------------------------------------------------------------


@pytest.mark.gui
def test_the_status_bar_shows_what_the_host_holds(qtbot, project: Project) -> None:
    from emgui.ui.main_window import MainWindow

    host, loader = ModelHost({"cpu": 10 * SIZE}), Loader()
    win = MainWindow(project, probe_device=False, host=host)
    qtbot.addWidget(win)
    assert win.models_label.text() == "models: no models loaded"
    leases: list = []
    worker = threading.Thread(target=lambda: leases.append(borrow(host, loader, "<b>a</b>")))
    worker.start()  # loaded off the UI thread: the label follows through a queued signal
    worker.join(10)
    qtbot.waitUntil(lambda: win.models_label.text() == "models: 1 model · 40.4 KB", timeout=5000)
    assert win.models_label.textFormat().name == "PlainText"  # a model's name is shown as typed
    assert "&lt;b&gt;a&lt;/b&gt; · cpu · 40.4 KB · ready · 1 using it" in win.models_label.toolTip()
    borrow(host, loader, "b").release()
    qtbot.waitUntil(lambda: win.models_label.text() == "models: 2 models · 80.8 KB", timeout=5000)
    leases[0].release()
    host.clear()
    qtbot.waitUntil(lambda: win.models_label.text() == "models: no models loaded", timeout=5000)
    win.close()
