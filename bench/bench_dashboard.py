"""Dashboard open time in the Features page for a 16k-latent SAE (target < 200 ms).

Builds a project whose SAE has 16,384 latents (on a small random llama, hidden size 64), runs a real
`diff` job over chats with dashboards for its top --dashboards latents, so the store holds a 16,384-row
ranking and real dashboard JSON. Then, in an offscreen window, it times:

- loading the 16k-row latent list into the page (once, when an SAE/diff is chosen);
- opening each built dashboard: selecting its row -> reading the JSON row -> HTML -> histogram ->
  processing events -> painting the view (median and worst);
- the bare baseline: reading and decoding the same JSON row from SQLite, nothing else.

Run: python bench/bench_dashboard.py [--dashboards 64] [--d-sae 16384]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault(
    "EMGUI_HOME", tempfile.mkdtemp(prefix="emgui-bench-home-")
)  # keep the recent-projects list clean
HOOK = "model.layers.1"


def build_project(root: Path, d_sae: int, n_dash: int) -> tuple:
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from emgui.core.features.saes import register_sae
    from emgui.core.jobs.runner import run_job
    from emgui.core.project.store import Project
    from tests.builders import make_tiny_chat_model, tiny_chats

    project = Project.create(root / "proj")
    base = make_tiny_chat_model(root / "base", hidden=64)
    ft = make_tiny_chat_model(root / "ft", hidden=64, seed=1)
    base_id = project.add_model(name="base", kind="folder", source=str(base), path=base)
    project.add_model(name="ft", kind="folder", source=str(ft), path=ft, base_model_id=base_id)
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=64, d_sae=d_sae, k=16, metadata=SAEMetadata(hook_name=HOOK)))
    folder = project.artifacts_dir / "saes" / "sae16k"
    sae.save_model(folder)
    sae_id = register_sae(project, folder, name="sae16k", source="folder", model_id=base_id)
    job0 = project.create_job("sample", {})
    chats = tiny_chats(200)
    for i, chat in enumerate(chats):
        project.insert(
            "samples",
            {
                "job_id": job0,
                "model_id": 2,
                "question_id": str(i),
                "prompt": chat[-2]["content"],
                "system": None,
                "answer": chat[-1]["content"] * 3,
                "created_at": 0.0,
            },
        )
    job = project.create_job("diff", {"sae": "sae16k", "ft": "ft", "prompts": job0, "dashboards": n_dash})
    assert run_job(project, job) == "succeeded", project.get_job(job)["error"]
    return project, sae_id, job


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--d-sae", type=int, default=16384)
    parser.add_argument("--dashboards", type=int, default=64)
    args = parser.parse_args()
    from emgui.core.features import latents as L

    tmp = Path(tempfile.mkdtemp(prefix="bench-dash-"))
    start = time.perf_counter()
    project, sae_id, job = build_project(tmp, args.d_sae, args.dashboards)
    print(
        f"built: SAE with {args.d_sae:,} latents, diff job #{job}, {args.dashboards} dashboards "
        f"in {time.perf_counter() - start:.1f} s"
    )
    latents = sorted(L.dashboard_latents(project, sae_id))
    sizes = [len(json.dumps(r["data"])) for r in project.query("SELECT data FROM dashboards")]

    bare = []
    for latent in latents:
        t = time.perf_counter()
        L.get_dashboard(project, sae_id, latent)
        bare.append((time.perf_counter() - t) * 1000)

    from emgui.ui.app import make_app
    from emgui.ui.main_window import MainWindow

    app = make_app()
    window = MainWindow(project, probe_device=False)
    window.resize(1400, 900)
    window.show()
    page = window.show_page("features")
    app.processEvents()
    t = time.perf_counter()
    page.refresh()
    app.processEvents()
    list_ms = (time.perf_counter() - t) * 1000
    assert page.model.rowCount() == args.d_sae, page.model.rowCount()

    opens = []
    for latent in latents:
        t = time.perf_counter()
        assert page.select_latent(latent)
        app.processEvents()
        page.view.viewport().repaint()
        opens.append((time.perf_counter() - t) * 1000)
    window.bridge.shutdown(2)
    print(
        f"dashboard JSON: median {statistics.median(sizes) / 1000:.1f} KB, largest {max(sizes) / 1000:.1f} KB"
    )
    print(
        f"latent list: {args.d_sae:,} rows loaded into the page in {list_ms:.0f} ms (once per SAE/diff choice)"
    )
    print(f"bare read of one dashboard row (SQLite + JSON): median {statistics.median(bare):.2f} ms")
    print(
        f"open a dashboard in the page (select, read, render, paint): median {statistics.median(opens):.1f} ms, "
        f"worst {max(opens):.1f} ms over {len(opens)}  (target < 200 ms)"
    )
    print(f"ratio page open / bare read (median): {statistics.median(opens) / statistics.median(bare):.0f}x")


if __name__ == "__main__":
    main()
