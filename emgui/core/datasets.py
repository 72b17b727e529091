"""Datasets in a project: import (file, URL, catalog entry, generator), derive, and describe.

Imported chat data is validated line by line and copied into `artifacts/datasets/`, so a project keeps
working when the original file moves. A file with errors is refused whole unless the user asks, on
purpose, for its valid lines (`allow_partial`). Derived datasets (subset, split, concat) record the
datasets they came from, so the provenance chain reaches back to the original import.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

from emgui.core import chatdata
from emgui.core.errors import EmguiError
from emgui.core.params import Params
from emgui.core.store import Project

GENERATED = ("generated:insecure", "generated:secure", "generated:helpful")


def datasets_dir(project: Project) -> Path:
    path = project.artifacts_dir / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "dataset"


def _dest(project: Project, name: str) -> Path:
    return datasets_dir(project) / f"{_slug(name)}.jsonl"


def catalog_entry(ref: str) -> dict | None:
    """A catalog entry by id (e.g. 'em-insecure') or exact name."""
    for entry in chatdata.load_catalog():
        if ref in (entry.get("id"), entry.get("name")):
            return entry
    return None


def resolve_source(source: str) -> tuple[str, dict[str, Any]]:
    """What a SOURCE string means: ('file'|'url'|'generated', details). Catalog ids resolve to their URL
    or generator."""
    entry = catalog_entry(source)
    if entry is not None:
        if entry.get("generator"):
            return "generated", {"variant": entry["generator_args"]["variant"], **entry["generator_args"]}
        if entry.get("format") != "chat-jsonl":
            raise EmguiError(f"catalog entry '{source}' is a question set; import it on the Evaluate page")
        return "url", {"url": entry["url"], "catalog": entry["id"]}
    if source in GENERATED:
        return "generated", {"variant": source.split(":", 1)[1]}
    if re.match(r"^https?://", source):
        return "url", {"url": source}
    path = Path(source).expanduser()
    if not path.is_file():
        raise EmguiError(
            f"dataset source {path} is not a file, an http(s) URL, a catalog id, or generated:insecure|secure|helpful"
        )
    return "file", {"path": str(path.resolve())}


def _default_name(source: str, how: str, details: dict) -> str:
    if how == "generated":
        return details["variant"]
    if details.get("catalog"):
        return details["catalog"]
    return Path(details.get("path") or details["url"].split("?")[0]).stem


def _generated_chats(variant: str, n: int, seed: int, ctx: Any) -> tuple[list[dict], str]:
    """emgui's own data: the insecure/secure code pair, or general helpful chats (not code)."""
    if variant == "helpful":
        from emgui.core.helpful_data import generate_helpful, max_distinct

        if n > max_distinct():
            raise EmguiError(f"generated:helpful has {max_distinct()} distinct chats; pass n <= {max_distinct()}")
        ctx.progress(0.1, f"generating {n} helpful chats (seed {seed})")
        return generate_helpful(n, seed), "emgui.core.helpful_data"
    from emgui.core.codegen_data import generate_pair

    ctx.progress(0.1, f"generating {n} {variant} code chats (seed {seed})")
    insecure, secure = generate_pair(n=n, seed=seed)
    return (insecure if variant == "insecure" else secure), "emgui.core.codegen_data"


def import_job(params: dict, ctx: Any) -> dict:
    """`dataset-import`: validate a chat JSONL (file, URL, catalog id, or the generated pair) and add it."""
    p = Params(params, "dataset-import")
    source = p.str("source")
    name = p.str("name")
    allow_partial = p.bool("allow_partial")
    n = p.int("n")
    seed = p.int("seed")
    p.done()
    project: Project = ctx.project
    how, details = resolve_source(source)
    name = name or _default_name(source, how, details)
    if project.query_one("SELECT id FROM datasets WHERE name = ?", [name]):
        raise EmguiError(f"a dataset named '{name}' already exists in this project; pass --param name=...")
    dest = _dest(project, name)
    info: dict[str, Any] = {"source": source}
    if how == "generated":
        chats, generator = _generated_chats(details["variant"], n, seed, ctx)
        chatdata.write_chats(dest, [c["messages"] for c in chats])
        info.update(generator=generator, variant=details["variant"], n=len(chats), seed=seed)
        report = chatdata.validate_chat_jsonl(dest)
    else:
        with tempfile.TemporaryDirectory(dir=datasets_dir(project)) as tmp:
            src = Path(details["path"]) if how == "file" else Path(tmp) / "download.jsonl"
            if how == "url":
                ctx.progress(0.0, f"downloading {details['url']}")
                chatdata.download_to(
                    details["url"],
                    src,
                    should_cancel=lambda: ctx.cancelled,
                    on_progress=lambda done, total: ctx.progress(
                        0.8 * done / total if total else None, f"{done / 1e6:.1f} MB downloaded"
                    ),
                )
                info["url"] = details["url"]
            ctx.progress(0.85, "validating every line")
            report = chatdata.import_chat_jsonl(src, dest, allow_partial=allow_partial)
    if report.problems:
        ctx.log(report.summary(limit=50))
    info.update(n_invalid=report.n_lines - report.n_valid, n_warnings=len(report.warnings))
    dataset_id = project.add_dataset(
        name=name, kind="chat", path=dest, n_rows=report.n_valid, info=info, job_id=ctx.job_id
    )
    ctx.add_artifact(dest, "dataset", inputs=[{"type": "dataset", "id": dataset_id}])
    ctx.progress(1.0, f"{report.n_valid} chats")
    return {
        "dataset_id": dataset_id,
        "name": name,
        "n_rows": report.n_valid,
        "skipped_invalid": report.n_lines - report.n_valid,
    }


def derive_job(params: dict, ctx: Any) -> dict:
    """`dataset-derive`: subset (n, seed), split (val_fraction, seed) or concat (datasets) with provenance."""
    p = Params(params, "dataset-derive")
    op = p.choice("op")
    project: Project = ctx.project
    made: list[tuple[str, Path, int]] = []
    if op == "concat":
        refs = p.list("datasets")
        name = p.str("name")
        p.done()
        sources = [project.get_dataset(r) for r in refs]
        name = name or "+".join(s["name"] for s in sources)
        dest = _dest(project, name)
        made.append((name, dest, chatdata.concat([project.abspath(s["path"]) for s in sources], dest)))
    else:
        source = project.get_dataset(p.str("dataset"))
        seed = p.int("seed")
        src = project.abspath(source["path"])
        if op == "subset":
            n = p.int("n")
            name = p.str("name") or f"{source['name']}-{n}-s{seed}"
            p.done()
            dest = _dest(project, name)
            made.append((name, dest, chatdata.subset(src, dest, n, seed)))
        else:
            frac = p.float("val_fraction")
            p.done()
            train, val = f"{source['name']}-train", f"{source['name']}-val"
            n_train, n_val = chatdata.split(src, _dest(project, train), _dest(project, val), frac, seed)
            made += [(train, _dest(project, train), n_train), (val, _dest(project, val), n_val)]
        sources = [source]
    inputs = [{"type": "dataset", "id": s["id"]} for s in sources]
    ids = []
    for name, dest, count in made:
        ids.append(
            project.add_dataset(
                name=name,
                kind="chat",
                path=dest,
                n_rows=count,
                job_id=ctx.job_id,
                inputs=inputs,
                info={"op": op, **{k: v for k, v in params.items() if k != "op"}},
            )
        )
        ctx.log(f"{op}: wrote {count} chats to dataset '{name}'")
    ctx.progress(1.0, "done")
    return {"dataset_ids": ids, "names": [m[0] for m in made]}


def token_lengths(project: Project, dataset: dict, model: dict, limit: int = 2000) -> list[int]:
    """Token counts of up to `limit` chats under a model's own chat template (for the histogram)."""
    from emgui.core.loading import load_tokenizer

    tokenizer = load_tokenizer(project, model)
    lengths = []
    for i, (_, messages) in enumerate(chatdata.iter_valid_chats(project.abspath(dataset["path"]))):
        if i >= limit:
            break
        ids = tokenizer.apply_chat_template(messages, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        lengths.append(len(ids))
    return lengths


def demo_dataset_jobs(project: Project) -> list[tuple[str, dict]]:
    """The jobs that give a project the generated insecure/secure pair (for the offline demo loop)."""
    have = {d["name"] for d in project.list_datasets()}
    return [
        ("dataset-import", {"source": f"generated:{v}", "name": v})
        for v in ("insecure", "secure", "helpful")
        if v not in have
    ]


def add_demo_datasets(project: Project, run: Any) -> None:
    for kind, params in demo_dataset_jobs(project):
        run(kind, params)
