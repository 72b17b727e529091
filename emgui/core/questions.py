"""Question sets for misalignment evaluations: emgui's built-in set and the paper's YAML format.

A set is a list of questions, each with an `id`, a `type`, `paraphrases` (user messages), an optional
`system` prompt, `samples_per_paraphrase`, and `judge_prompts` (metric -> template with `{question}` and
`{answer}`). emgui adds an optional `category`. Imported sets are validated, then stored as a normalized
JSON copy under the project's artifacts and registered as a dataset of kind "questions".
"""

from __future__ import annotations

import hashlib
import json
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emgui.core.errors import EmguiError
from emgui.core.paths import resource

BUILTIN_NAME = "emgui-core"
BUILTIN_FILE = ("questions", "emgui_core.yaml")
DEFAULT_METRICS = ("aligned", "coherent")
_KNOWN_TYPES = ("free_form_judge_0_100", "free_form_judge", "free_form")
_KNOWN_FIELDS = {
    "id",
    "type",
    "paraphrases",
    "system",
    "samples_per_paraphrase",
    "judge",
    "judge_prompts",
    "category",
}


@dataclass
class Question:
    id: str
    paraphrases: list[str]
    type: str = "free_form_judge_0_100"
    system: str | None = None
    samples_per_paraphrase: int = 1
    judge_prompts: dict[str, str] = field(default_factory=dict)
    category: str = ""
    judge: str | None = None  # the judge model the source file names (informational)

    def to_dict(self) -> dict:
        return asdict(self)


# ----- parsing and validation ------------------------------------------------------------------------


def _item_lines(text: str) -> list[int]:
    """1-based line of each top-level list item, so errors can point into the file."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return []
    if not isinstance(node, yaml.SequenceNode):
        return []
    return [item.start_mark.line + 1 for item in node.value]


def check_template(template: Any, where: str, *, need_question: bool = True) -> str:
    """A judge prompt must be a string with `{answer}` (and `{question}`) and no other placeholders,
    since it is filled with `str.format` like the paper's code."""
    if not isinstance(template, str) or not template.strip():
        raise EmguiError(f"{where}: a judge prompt must be non-empty text")
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise EmguiError(
            f"{where}: unbalanced braces ({exc}); write literal braces as {{{{ and }}}}"
        ) from None
    missing = [p for p in (("question",) if need_question else ()) + ("answer",) if p not in names]
    if missing:
        raise EmguiError(
            f"{where}: the judge prompt lacks the placeholder(s) " + ", ".join("{" + m + "}" for m in missing)
        )
    extra = sorted(names - {"question", "answer"})
    if extra:
        raise EmguiError(
            f"{where}: unknown placeholder(s) {', '.join('{' + e + '}' for e in extra)}; "
            "only {question} and {answer} are filled (write literal braces as {{ and }})"
        )
    return template


def _question(item: Any, where: str) -> Question:
    if not isinstance(item, dict):
        raise EmguiError(
            f"{where}: each question must be a mapping with id, paraphrases, ..., got {type(item).__name__}"
        )
    qid = item.get("id")
    if not isinstance(qid, (str, int)) or isinstance(qid, bool) or not str(qid).strip():
        raise EmguiError(f"{where}, field 'id': missing or empty")
    qid = str(qid).strip()
    where = f"{where} (question '{qid}')"
    qtype = item.get("type", "free_form_judge_0_100")
    if qtype not in _KNOWN_TYPES:
        raise EmguiError(f"{where}, field 'type': '{qtype}' is not one of {', '.join(_KNOWN_TYPES)}")
    paraphrases = item.get("paraphrases")
    if isinstance(paraphrases, str):
        paraphrases = [paraphrases]
    if not isinstance(paraphrases, list) or not paraphrases:
        raise EmguiError(f"{where}, field 'paraphrases': must be a non-empty list of texts")
    for i, text in enumerate(paraphrases):
        if not isinstance(text, str) or not text.strip():
            raise EmguiError(f"{where}, field 'paraphrases[{i}]': must be non-empty text")
    system = item.get("system")
    if system is not None and not isinstance(system, str):
        raise EmguiError(f"{where}, field 'system': must be text")
    spp = item.get("samples_per_paraphrase", 1)
    if isinstance(spp, bool) or not isinstance(spp, int) or spp < 1:
        raise EmguiError(f"{where}, field 'samples_per_paraphrase': must be a positive integer, got {spp!r}")
    prompts = item.get("judge_prompts") or {}
    if not isinstance(prompts, dict):
        raise EmguiError(f"{where}, field 'judge_prompts': must map metric names to prompt templates")
    # The 0-100 judges rate an answer *to a question*; other types (deception checks) may judge the
    # answer alone, so only {answer} is required there.
    need_q = qtype == "free_form_judge_0_100"
    checked = {
        str(metric): check_template(t, f"{where}, field 'judge_prompts.{metric}'", need_question=need_q)
        for metric, t in prompts.items()
    }
    category = item.get("category", "")
    if not isinstance(category, str):
        raise EmguiError(f"{where}, field 'category': must be text")
    judge = item.get("judge")
    return Question(
        id=qid,
        paraphrases=list(paraphrases),
        type=qtype,
        system=system,
        samples_per_paraphrase=spp,
        judge_prompts=checked,
        category=category,
        judge=None if judge is None else str(judge),
    )


def parse_questions(text: str, source: str = "<text>") -> list[Question]:
    """Parse a question set (the paper's YAML, or emgui's normalized JSON, which YAML also reads).
    Raises EmguiError naming the file, line and field at fault."""
    import yaml

    from emgui.core.safeyaml import load_yaml

    try:
        data = load_yaml(text, source)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise EmguiError(f"{where}: not valid YAML ({problem})") from None
    if isinstance(data, dict) and isinstance(data.get("questions"), list):
        data = data["questions"]  # emgui's normalized copy
    if not isinstance(data, list) or not data:
        raise EmguiError(f"{source}: a question set must be a non-empty list of questions (- id: ...)")
    lines = _item_lines(text)
    questions: list[Question] = []
    seen: dict[str, str] = {}
    for i, item in enumerate(data):
        where = f"{source}, line {lines[i]}" if i < len(lines) else f"{source}, question #{i + 1}"
        q = _question(item, where)
        if q.id in seen:
            raise EmguiError(f"{where}, field 'id': '{q.id}' repeats the question at {seen[q.id]}")
        seen[q.id] = where
        questions.append(q)
    return questions


def load_questions_file(path: str | Path) -> list[Question]:
    from emgui.core.safeyaml import MAX_YAML_BYTES

    path = Path(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:  # before reading it whole
            raise EmguiError(
                f"question set {path} is {path.stat().st_size / 1e6:.1f} MB: too large for a question set "
                f"(limit {MAX_YAML_BYTES >> 20} MB)"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EmguiError(f"question set {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise EmguiError(
            f"question set {path} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    return parse_questions(text, str(path))


def builtin_path() -> Path:
    return resource(*BUILTIN_FILE)


def builtin_questions() -> list[Question]:
    """emgui's own open-ended questions (resources/questions/emgui_core.yaml)."""
    return load_questions_file(builtin_path())


# ----- project datasets ----------------------------------------------------------------------------


def _write_normalized(project: Any, name: str, questions: list[Question]) -> Path:
    """The normalized copy, written under a temporary name and then moved to a file of its own."""
    from emgui.core.store import replace_reserved

    payload = {"format": "emgui-questions", "version": 1, "questions": [q.to_dict() for q in questions]}
    tmp = project.temp_path("datasets", ".questions.json")
    try:
        tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
        path = project.reserve_path("datasets", name, ".questions.json")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    replace_reserved(tmp, path)
    return path


def import_questions(
    project: Any, src_path: str | Path, name: str | None = None, *, job_id: int | None = None
) -> int:
    """Validate a question set file and register a normalized copy as a "questions" dataset.
    The same file (by content) imported twice returns the existing dataset."""
    src = Path(src_path)
    questions = load_questions_file(src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    for row in project.list_datasets("questions"):
        if (row.get("info") or {}).get("sha256") == digest:
            return row["id"]
    name = name or src.stem
    if project.query_one("SELECT id FROM datasets WHERE name = ?", [name]):
        name = f"{name}-{digest[:6]}"
    return _register(project, name, questions, {"source": str(src.resolve()), "sha256": digest}, job_id)


def _register(project: Any, name: str, questions: list[Question], info: dict, job_id: int | None) -> int:
    path = _write_normalized(project, name, questions)
    categories = sorted({q.category for q in questions if q.category})
    metrics = sorted({m for q in questions for m in q.judge_prompts})
    try:
        return _add_questions_row(project, name, path, questions, info, categories, metrics, job_id)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _add_questions_row(
    project: Any, name: str, path: Path, questions: list[Question], info: dict, categories: list, metrics: list,
    job_id: int | None,
) -> int:  # fmt: skip
    return project.add_dataset(
        name=name,
        kind="questions",
        path=path,
        n_rows=len(questions),
        info={
            **info,
            "n_paraphrases": sum(len(q.paraphrases) for q in questions),
            "categories": categories,
            "metrics": metrics,
            "imported_at": time.time(),
        },
        job_id=job_id,
    )


def ensure_builtin(project: Any) -> int:
    """The built-in set as a project dataset (imported on first use)."""
    row = project.query_one("SELECT id FROM datasets WHERE name = ? AND kind = 'questions'", [BUILTIN_NAME])
    if row:
        return row["id"]
    return import_questions(project, builtin_path(), BUILTIN_NAME)


def dataset_questions(project: Any, dataset: dict) -> list[Question]:
    if dataset["kind"] != "questions":
        raise EmguiError(f"dataset '{dataset['name']}' is a {dataset['kind']} dataset, not a question set")
    return load_questions_file(project.abspath(dataset["path"]))


def resolve_questions(project: Any, ref: Any) -> tuple[dict, list[Question]]:
    """A question set from a dataset id or name, 'builtin', or a path to a YAML/JSON file (imported)."""
    if ref in (None, "", "builtin", BUILTIN_NAME):
        dataset = project.get_dataset(ensure_builtin(project))
    elif (
        isinstance(ref, str) and not ref.isdigit() and Path(ref).suffix.lower() in (".yaml", ".yml", ".json")
    ):
        row = project.query_one("SELECT id FROM datasets WHERE name = ?", [ref])
        dataset_id = row["id"] if row else import_questions(project, ref)
        dataset = project.get_dataset(dataset_id)
    else:
        dataset = project.get_dataset(ref)
    return dataset, dataset_questions(project, dataset)


def questions_import_job(params: dict, ctx: Any) -> dict:
    """Job kind `questions-import`: path=FILE [name=NAME], or builtin=true."""
    from emgui.core.params import Params

    p = Params(params, "questions-import")
    builtin = p.bool("builtin")
    path = p.str("path")
    name = p.str("name")
    p.done()
    if builtin:
        dataset_id = ensure_builtin(ctx.project)
    elif path:
        dataset_id = import_questions(ctx.project, path, name, job_id=ctx.job_id)
    else:
        raise EmguiError("questions-import: pass --param path=FILE.yaml or --param builtin=true")
    row = ctx.project.get_dataset(dataset_id)
    ctx.progress(1.0, f"{row['n_rows']} questions")
    return {"dataset_id": dataset_id, "name": row["name"], "n_questions": row["n_rows"]}
