"""Judge-free measures of a model, stored in the `measures` table (one row per model, measure and job):
the likelihood margin on a labelled panel, the persona projection of its answers, the controlled diff's top
latents at a re-alignment snapshot.
"""

from __future__ import annotations

import time
from typing import Any

LIKELIHOOD = "likelihood-margin"


PROJECTION = "persona-projection"


LATENTS = "diff-latents"



def add_measure(
    project: Any, *, job_id: int | None, model_id: int | None, measure: str, stats: dict, info: dict
) -> int:
    """One measured value with its interval (`stats`: value or mean, ci_low, ci_high, n)."""
    value = stats.get("value", stats.get("mean"))
    return project.insert(
        "measures",
        {
            "job_id": job_id,
            "model_id": model_id,
            "measure": measure,
            "value": value,
            "ci_low": stats.get("ci_low"),
            "ci_high": stats.get("ci_high"),
            "n": stats.get("n"),
            "info": info,
            "created_at": time.time(),
        },
    )



def latest_measures(project: Any, model_id: int) -> dict[str, dict]:
    """The newest value of each measure of a model (measure name -> row)."""
    out: dict[str, dict] = {}
    for row in project.query("SELECT * FROM measures WHERE model_id = ? ORDER BY id", [model_id]):
        out[row["measure"]] = row
    return out



def measures_of_job(project: Any, job_id: int) -> list[dict]:
    return project.query("SELECT * FROM measures WHERE job_id = ? ORDER BY id", [job_id])
