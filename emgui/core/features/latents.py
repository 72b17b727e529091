"""The latent list the feature browser reads: a diff's ranking with labels, notes and dashboard flags, the
caveats of that ranking, labels and notes, stored dashboards, and export to JSON or CSV."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

from emgui.core.errors import EmguiError
from emgui.core.project.store import Project

EXPORT_FIELDS = [
    "latent",
    "rank",
    "z",
    "effect",
    "delta_control",
    "label",
    "note",
    "delta_mean",
    "delta_freq",
    "base_mean",
    "ft_mean",
    "base_freq",
    "ft_freq",
    "has_dashboard",
]


def get_dashboard(project: Project, sae_id: int, latent: int) -> dict | None:
    """A stored dashboard (one indexed row), or None when none was built for this latent."""
    row = project.query_one(
        "SELECT data FROM dashboards WHERE sae_id = ? AND latent = ?", [sae_id, int(latent)]
    )
    return row["data"] if row else None


def dashboard_latents(project: Project, sae_id: int) -> set[int]:
    return {r["latent"] for r in project.query("SELECT latent FROM dashboards WHERE sae_id = ?", [sae_id])}


def diff_jobs(project: Project, sae_id: int | None = None) -> list[dict]:
    """Finished diff jobs (newest first), only those of one SAE when given."""
    jobs = [j for j in project.list_jobs("diff") if j["status"] == "succeeded" and j.get("result")]
    if sae_id is not None:
        jobs = [j for j in jobs if j["result"].get("sae_id") == sae_id]
    return jobs[::-1]


def diff_caveats(project: Project, diff_job: int | None) -> dict:
    """What can be read from a diff job's ranking: whether it has a control, how much the control shares
    the fine-tune's change, and the warnings to show beside the list."""
    if diff_job is None:
        return {"controlled": None, "warnings": []}
    result = project.get_job(diff_job).get("result") or {}
    controlled = bool(result.get("controlled"))
    warnings = result.get("warnings")
    if warnings is None:  # a diff made before controls existed: say so the same way
        from emgui.core.features.diffing import diff_warnings

        warnings = diff_warnings(controlled, result)
    control = None
    if result.get("control_model_id"):
        row = project.query_one("SELECT name FROM models WHERE id = ?", [result["control_model_id"]])
        control = row["name"] if row else None
    return {
        "controlled": controlled,
        "control": control,
        "control_correlation": result.get("control_correlation"),
        "control_direction_cosine": result.get("control_direction_cosine"),
        "warnings": warnings,
    }


def ranking(project: Project, diff_job: int) -> list[dict]:
    """Every latent of a diff job, by rank, with its label, note and whether a dashboard exists."""
    return project.query(
        "SELECT s.latent, s.rank, s.base_mean, s.ft_mean, s.delta_mean, s.base_freq, s.ft_freq, s.delta_freq, "
        "s.control_mean, s.delta_control, s.effect, s.effect_sd, s.z, "
        "COALESCE(l.label, '') AS label, COALESCE(l.note, '') AS note, "
        "(d.latent IS NOT NULL) AS has_dashboard "
        "FROM latent_stats s "
        "LEFT JOIN latent_labels l ON l.sae_id = s.sae_id AND l.latent = s.latent "
        "LEFT JOIN dashboards d ON d.sae_id = s.sae_id AND d.latent = s.latent "
        "WHERE s.job_id = ? ORDER BY s.rank",
        [diff_job],
    )


def latent_list(project: Project, sae_id: int, diff_job: int | None) -> list[dict]:
    """The rows the browser lists: a diff job's ranking, or without one, the latents that have a
    dashboard or a label (statistics blank)."""
    if diff_job is not None:
        return ranking(project, diff_job)
    rows = project.query(
        "SELECT latent FROM dashboards WHERE sae_id = ? UNION SELECT latent FROM latent_labels WHERE sae_id = ?",
        [sae_id, sae_id],
    )
    labels = get_labels(project, sae_id)
    have = dashboard_latents(project, sae_id)
    out = []
    for r in sorted(rows, key=lambda r: r["latent"]):
        lab = labels.get(r["latent"], {})
        out.append(
            {
                "latent": r["latent"],
                "rank": None,
                **{
                    k: None
                    for k in ("base_mean", "ft_mean", "delta_mean", "base_freq", "ft_freq", "delta_freq",
                              "control_mean", "delta_control", "effect", "effect_sd", "z")
                },
                "label": lab.get("label", ""),
                "note": lab.get("note", ""),
                "has_dashboard": int(r["latent"] in have),
            }
        )
    return out


# ------------------------------------------------------------------------------------------ labels
def set_label(
    project: Project, sae_id: int, latent: int, *, label: str | None = None, note: str | None = None
) -> None:
    """Set a latent's label and/or note (None keeps the current value)."""
    with project.transaction() as conn:
        row = conn.execute(
            "SELECT label, note FROM latent_labels WHERE sae_id = ? AND latent = ?", [sae_id, latent]
        ).fetchone()
        new_label = label if label is not None else (row["label"] if row else "")
        new_note = note if note is not None else (row["note"] if row else "")
        conn.execute(
            # an upsert, not INSERT OR REPLACE: a replace deletes without firing the search index's trigger
            "INSERT INTO latent_labels (sae_id, latent, label, note, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (sae_id, latent) DO UPDATE SET label = excluded.label, note = excluded.note, "
            "updated_at = excluded.updated_at",
            [sae_id, latent, new_label.strip(), new_note, time.time()],
        )


def get_label(project: Project, sae_id: int, latent: int) -> dict | None:
    """One latent's label and note, or None when it has neither."""
    return project.query_one(
        "SELECT label, note FROM latent_labels WHERE sae_id = ? AND latent = ?", [sae_id, int(latent)]
    )


def get_labels(project: Project, sae_id: int) -> dict[int, dict]:
    rows = project.query("SELECT latent, label, note FROM latent_labels WHERE sae_id = ?", [sae_id])
    return {r["latent"]: {"label": r["label"], "note": r["note"]} for r in rows}


def export_latents(
    project: Project,
    sae_id: int,
    path: str | Path,
    *,
    diff_job: int | None = None,
    latents: list[int] | None = None,
) -> int:
    """Write the latent list (ranking statistics, labels, notes) as JSON or CSV, by the file's suffix.
    `latents` limits it to those (e.g. the rows the browser shows). Returns the number of rows."""
    path = Path(path)
    rows = latent_list(project, sae_id, diff_job)
    if latents is not None:
        wanted = {int(i) for i in latents}
        rows = [r for r in rows if r["latent"] in wanted]
    rows = [{k: (bool(r[k]) if k == "has_dashboard" else r[k]) for k in EXPORT_FIELDS} for r in rows]
    suffix = path.suffix.lower()
    if suffix == ".json":
        meta = {"sae_id": sae_id, "sae": project.query_one("SELECT name FROM saes WHERE id = ?", [sae_id])}
        doc = {"sae": meta["sae"]["name"] if meta["sae"] else None, "diff_job": diff_job, "latents": rows}
        path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    elif suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=EXPORT_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    else:
        raise EmguiError(f"export: {path} must end in .json or .csv")
    return len(rows)
