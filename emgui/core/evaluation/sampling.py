"""Sampling answers: N answers per question of a question set from a model or a training checkpoint
(the `sample` job), stored in the `samples` table with their generation parameters.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.jobs.params import Params


def sampling_params(p: Params) -> dict:
    return {
        "temperature": p.float("temperature"),
        "top_p": p.float("top_p"),
        "max_new_tokens": p.int("max_new_tokens"),
        "seed": p.int("seed"),
        "batch_size": p.int("batch_size"),
    }



def resolve_model(project: Any, ref: Any, checkpoint: str | None = None, base: Any = None) -> dict:
    """A model row from a reference, or a training checkpoint folder registered on first use."""
    if not checkpoint:
        if ref in (None, ""):
            raise EmguiError("missing parameter 'model' (a model of this project, or checkpoint=FOLDER)")
        return project.get_model(ref)
    folder = Path(checkpoint).resolve()
    if not folder.is_dir():
        raise EmguiError(f"checkpoint {folder} is not a folder")
    stored = project.relpath(folder)
    row = project.query_one("SELECT * FROM models WHERE path = ?", [stored])
    if row:
        return row
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        hint = (
            " It holds a training job's resume state (trainable.safetensors), not a model: sample the models "
            "that finetune/realign registered instead."
            if (folder / "trainable.safetensors").is_file()
            else ""
        )
        raise EmguiError(f"checkpoint {folder}: neither adapter_config.json nor config.json is there.{hint}")
    base_row = None
    if is_adapter:
        base_row = project.get_model(base) if base not in (None, "") else _adapter_base(project, folder)
    name = f"{folder.parent.name}-{folder.name}" if folder.parent != folder else folder.name
    while project.query_one("SELECT id FROM models WHERE name = ?", [name]):
        name += "+"
    model_id = project.add_model(
        name=name,
        kind="adapter" if is_adapter else "folder",
        source=str(folder),
        path=folder,
        base_model_id=base_row["id"] if base_row else None,
        info={"checkpoint": True},
    )
    return project.get_model(model_id)



def _adapter_base(project: Any, folder: Path) -> dict:
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base_ref = str(config.get("base_model_name_or_path") or "")
    for row in project.list_models():
        if row["kind"] != "adapter" and (
            str(project.model_path(row)) == base_ref or row["source"] == base_ref or row["name"] == base_ref
        ):
            return row
    raise EmguiError(
        f"checkpoint {folder}: its base model '{base_ref}' is not a model of this project; pass base=MODEL"
    )



def sample_items(questions: Sequence[Any], n: int) -> list[dict]:
    """n answers per question; paraphrases take turns so each gets about n / len(paraphrases)."""
    items = []
    for q in questions:
        for s in range(n):
            k = s % len(q.paraphrases)
            items.append(
                {
                    "question_id": q.id,
                    "paraphrase_index": k,
                    "sample_index": s,
                    "prompt": q.paraphrases[k],
                    "system": q.system,
                }
            )
    return items



def _conversation(item: dict) -> list[dict]:
    turns = [{"role": "system", "content": item["system"]}] if item.get("system") else []
    return [*turns, {"role": "user", "content": item["prompt"]}]



class _SamplingBar:
    """The progress of a sampling job: answers stored, and within a batch the share of its tokens written
    (a long batch on a CPU takes minutes, and the bar must not sit still meanwhile)."""

    def __init__(self, ctx: Any, lo: float, hi: float, total: int, done: int, max_new_tokens: int) -> None:
        self.ctx, self.lo, self.hi, self.total, self.max_new_tokens = ctx, lo, hi, total, max_new_tokens
        self.done, self.first, self.new = done, done, 0
        self.t0 = time.monotonic()
        self._last = 0.0

    def _at(self, answers: float) -> float:
        return self.lo + (self.hi - self.lo) * answers / self.total

    def stored(self, n: int) -> None:
        self.done += n
        self.new += n
        rate = self.new / max(1e-9, time.monotonic() - self.t0)
        self.ctx.metric("answers_per_s", self.done, rate)
        self.ctx.progress(self._at(self.done), f"{self.done}/{self.total} answers")

    def writing(self, before: int, batch: int, tokens: int) -> None:
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        done = self.first + before
        share = min(1.0, tokens / max(1, self.max_new_tokens))
        self.ctx.progress(
            self._at(done + batch * share), f"{done}/{self.total} answers; writing the next {batch}: {tokens} tokens"
        )


def generate_samples_into(
    ctx: Any,
    model_row: dict,
    items: list[dict],
    gen: dict,
    *,
    dataset_id: int | None,
    progress: tuple[float, float] = (0.0, 1.0),
    device: str | None = None,
) -> tuple[Any, Any]:
    """Generate the items this job has not stored yet and store them batch by batch (so a resumed job
    continues). Returns the loaded (model, tokenizer) for reuse."""
    from emgui.core.lm.generation import generate_batch
    from emgui.core.models.host import borrow_for

    project = ctx.project
    done = {
        (r["question_id"], r["sample_index"])
        for r in project.query("SELECT question_id, sample_index FROM samples WHERE job_id = ?", [ctx.job_id])
    }
    todo = [it for it in items if (it["question_id"], it["sample_index"]) not in done]
    lo, hi = progress
    total = len(items)
    if not todo:
        return None, None
    # Loading fills the first 3% of the range, so the bar moves as soon as work starts.
    span = hi - lo
    lo, hi = lo + 0.03 * span, hi
    ctx.progress(lo - 0.02 * span + (hi - lo) * (total - len(todo)) / max(1, total), f"loading {model_row['name']}")
    model, tokenizer = borrow_for(ctx, model_row, device=device)
    params = {**gen, "model": model_row["name"]}
    bar = _SamplingBar(ctx, lo, hi, total, total - len(todo), gen["max_new_tokens"])

    def on_batch(indices: list[int], answers: list[str]) -> None:
        now = time.time()
        rows = [
            {
                "job_id": ctx.job_id,
                "model_id": model_row["id"],
                "dataset_id": dataset_id,
                **{k: todo[i][k] for k in ("question_id", "paraphrase_index", "sample_index", "prompt", "system")},
                "answer": a,
                "params": params,
                "created_at": now,
            }
            for i, a in zip(indices, answers, strict=True)
        ]
        project.insert_many("samples", rows)
        bar.stored(len(rows))

    ctx.progress(lo + (hi - lo) * (total - len(todo)) / total, f"{total - len(todo)}/{total} answers")
    generate_batch(
        model,
        tokenizer,
        [_conversation(it) for it in todo],
        temperature=gen["temperature"],
        top_p=gen["top_p"],
        max_new_tokens=gen["max_new_tokens"],
        seed=gen["seed"],
        batch_size=gen["batch_size"],
        should_cancel=lambda: ctx.cancelled,
        on_batch=on_batch,
        on_token=bar.writing,
    )
    ctx.check_cancelled()
    ctx.log(f"{bar.new} answers from {model_row['name']} in {time.monotonic() - bar.t0:.1f} s")
    return model, tokenizer



def read_sampling(p: Params) -> dict:
    model_ref, checkpoint, base = p.str("model"), p.str("checkpoint"), p.str("base")
    questions_ref = p.str("questions")
    ids = p.list("question_ids")
    return {
        "model": (model_ref, checkpoint, base),
        "questions": questions_ref,
        "question_ids": ids,
        "n": p.int("n"),
        "gen": sampling_params(p),
        "device": p.str("device"),
    }



def prepare_sampling(ctx: Any, spec: dict) -> tuple[dict, dict, list]:
    from emgui.core.data.questions import resolve_questions

    model_row = resolve_model(ctx.project, *spec["model"])
    dataset, questions = resolve_questions(ctx.project, spec["questions"])
    if spec["question_ids"]:
        known = {q.id for q in questions}
        unknown = [i for i in spec["question_ids"] if i not in known]
        if unknown:
            raise EmguiError(f"question_ids: {', '.join(unknown)} not in question set '{dataset['name']}'")
        questions = [q for q in questions if q.id in set(spec["question_ids"])]
    return model_row, dataset, questions



def sample_job(params: dict, ctx: Any) -> dict:
    """Job kind `sample`: model=REF (or checkpoint=FOLDER [base=REF]) questions=SET n=10 temperature=1 ..."""
    p = Params(params, "sample")
    spec = read_sampling(p)
    p.done()
    model_row, dataset, questions = prepare_sampling(ctx, spec)
    items = sample_items(questions, spec["n"])
    t0 = time.monotonic()
    generate_samples_into(ctx, model_row, items, spec["gen"], dataset_id=dataset["id"], device=spec["device"])
    ctx.progress(1.0, f"{len(items)} answers")
    return {
        "run": ctx.job_id,
        "model": model_row["name"],
        "questions": dataset["name"],
        "n_samples": len(items),
        "seconds": round(time.monotonic() - t0, 2),
    }
