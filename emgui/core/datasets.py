"""Datasets in a project: import (file, URL, catalog entry, generator), derive, and describe.

Imported chat data is validated line by line and copied into `artifacts/datasets/`, so a project keeps
working when the original file moves. A file with errors is refused whole unless the user asks, on
purpose, for its valid lines (`allow_partial`). Derived datasets (subset, split, concat) record the
datasets they came from, so the provenance chain reaches back to the original import.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from emgui.core import chatdata
from emgui.core.errors import EmguiError
from emgui.core.params import Params
from emgui.core.store import Project, remove_path, replace_reserved

GENERATED = ("generated:insecure", "generated:secure", "generated:helpful")


def datasets_dir(project: Project) -> Path:
    path = project.artifacts_dir / "datasets"
    path.mkdir(parents=True, exist_ok=True)
    return path


class _NewFiles:
    """The files one job writes into artifacts/datasets/. Each is written under a temporary name first
    (one that an interrupted job leaves for the next open to remove) and then moved to a fresh path of its
    own that no other row points at (`Project.reserve_path`): names that slug alike never share a file."""

    def __init__(self, project: Project):
        self.project = project
        self.temps: dict[str, Path] = {}
        self.placed: list[Path] = []

    def temp(self, name: str) -> Path:
        self.temps[name] = self.project.temp_path("datasets", ".jsonl")
        return self.temps[name]

    def place(self, name: str) -> Path:
        dest = self.project.reserve_path("datasets", name, ".jsonl")
        self.placed.append(dest)
        replace_reserved(self.temps.pop(name), dest)
        return dest

    def discard(self) -> None:
        for path in [*self.temps.values(), *self.placed]:
            path.unlink(missing_ok=True)


@contextmanager
def _new_files(project: Project) -> Iterator[_NewFiles]:
    """New dataset files that all disappear again if the block fails, so a failed job leaves nothing."""
    files = _NewFiles(project)
    try:
        yield files
    except BaseException:
        files.discard()
        raise


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
    info: dict[str, Any] = {"source": source}
    with _new_files(project) as files:
        tmp = files.temp(name)
        if how == "generated":
            chats, generator = _generated_chats(details["variant"], n, seed, ctx)
            chatdata.write_chats(tmp, [c["messages"] for c in chats])
            info.update(generator=generator, variant=details["variant"], n=len(chats), seed=seed)
            report = chatdata.validate_chat_jsonl(tmp)
        else:
            report = _import_file_or_url(project, ctx, how, details, tmp, allow_partial, info)
        report.path = source
        dataset_id = _add_imported(project, ctx, name, files.place(name), report, info)
    ctx.progress(1.0, f"{report.n_valid} chats")
    return {
        "dataset_id": dataset_id,
        "name": name,
        "n_rows": report.n_valid,
        "skipped_invalid": report.n_invalid,
    }


def _import_file_or_url(
    project: Project, ctx: Any, how: str, details: dict, dest: Path, allow_partial: bool, info: dict
) -> chatdata.ValidationReport:
    """Validate a local file, or download a URL first (into a temporary file that an interrupted import
    leaves for the next open to remove), and copy its chats to dest."""
    if how == "file":
        ctx.progress(0.85, "validating every line")
        return chatdata.import_chat_jsonl(Path(details["path"]), dest, allow_partial=allow_partial)
    tmp = project.temp_path("datasets", directory=True)
    try:
        src = tmp / "download.jsonl"
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
        return chatdata.import_chat_jsonl(src, dest, allow_partial=allow_partial)
    finally:
        remove_path(tmp)


def _add_imported(
    project: Project, ctx: Any, name: str, dest: Path, report: chatdata.ValidationReport, info: dict
) -> int:
    if report.problems:
        ctx.log(report.summary(limit=50))
    info.update(n_invalid=report.n_invalid, n_warnings=report.n_warnings)
    dataset_id = project.add_dataset(
        name=name, kind="chat", path=dest, n_rows=report.n_valid, info=info, job_id=ctx.job_id
    )
    ctx.add_artifact(dest, "dataset", inputs=[{"type": "dataset", "id": dataset_id}])
    return dataset_id


def derive_job(params: dict, ctx: Any) -> dict:
    """`dataset-derive`: subset (n, seed), split (val_fraction, seed) or concat (datasets) with provenance."""
    p = Params(params, "dataset-derive")
    op = p.choice("op")
    project: Project = ctx.project
    made: list[tuple[str, int]] = []
    with _new_files(project) as files:
        if op == "concat":
            refs = p.list("datasets")
            name = p.str("name", None)
            p.done()
            sources = [project.get_dataset(r) for r in refs]
            name = name or "+".join(s["name"] for s in sources)
            _check_free(project, name)
            made.append((name, chatdata.concat([project.abspath(s["path"]) for s in sources], files.temp(name))))
        else:
            source = project.get_dataset(p.str("dataset"))
            seed = p.int("seed", 0)
            src = project.abspath(source["path"])
            if op == "subset":
                n = p.int("n", min=1)
                name = p.str("name", None) or f"{source['name']}-{n}-s{seed}"
                p.done()
                _check_free(project, name)
                made.append((name, chatdata.subset(src, files.temp(name), n, seed)))
            else:
                frac = p.float("val_fraction", 0.1, min=0.0, max=1.0)
                p.done()
                train, val = f"{source['name']}-train", f"{source['name']}-val"
                _check_free(project, train)
                _check_free(project, val)
                n_train, n_val = chatdata.split(src, files.temp(train), files.temp(val), frac, seed)
                made += [(train, n_train), (val, n_val)]
            sources = [source]
        placed = [(name, files.place(name), count) for name, count in made]
        ids = _add_derived(project, ctx, op, params, placed, sources)
    ctx.progress(1.0, "done")
    return {"dataset_ids": ids, "names": [m[0] for m in made]}


def _check_free(project: Project, name: str) -> None:
    if project.query_one("SELECT id FROM datasets WHERE name = ?", [name]):
        raise EmguiError(f"a dataset named '{name}' already exists in this project; pass --param name=...")


def _add_derived(
    project: Project, ctx: Any, op: str, params: dict, made: list[tuple[str, Path, int]], sources: list[dict]
) -> list[int]:
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
    return ids


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
