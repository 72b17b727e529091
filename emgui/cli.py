"""The command line: every job runs headless here, for a workstation reached over SSH.

With no arguments, `emgui` opens the main window. The CLI never imports Qt unless it opens a window
or renders a screenshot.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import threading
import time
from typing import Any

from emgui import __version__
from emgui.core.errors import EmguiError
from emgui.core.jobs.params import dumps_strict


def _print_err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


class _StderrReporter:
    """Prints a job's progress and log lines to stderr: an updating line on a terminal, else a line a second."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self._lock:
            if event.type == "progress":
                now = time.monotonic()
                if now - self._last < (0.1 if self.tty else 1.0) and event.data["progress"] < 1.0:
                    return
                self._last = now
                line = f"[job {event.job_id}] {event.data['progress'] * 100:5.1f}%  {event.data['message']}"
                if self.tty:
                    sys.stderr.write("\r\033[K" + line[:200])
                else:
                    sys.stderr.write(line + "\n")
            elif event.type == "log":
                prefix = "\r\033[K" if self.tty else ""
                for text in event.data["lines"]:
                    sys.stderr.write(f"{prefix}[job {event.job_id}] {text}\n")
            elif event.type == "status" and self.tty:
                sys.stderr.write("\n")
            sys.stderr.flush()


def run_inline(project: Any, kind: str, params: dict, *, job_id: int | None = None, runner: Any = None) -> dict:
    """Run a job in this process with progress on stderr. Raises EmguiError unless it succeeds; returns
    the job row. Refused parameters leave no job row.

    Ctrl-C cancels the job, waits until it has stopped (it keeps its last checkpoint and ends `cancelled`),
    then raises KeyboardInterrupt (exit status 130). The main thread waits on an Event, never in
    `Thread.join`: on Python 3.10-3.12 a KeyboardInterrupt inside `join` marks the still-running thread as
    finished, and a process that then exits while the worker is inside torch dies with SIGABRT."""
    from emgui.core.jobs.kinds import get_kind, resolve_params
    from emgui.core.jobs.runner import run_job

    project.check_writable("run jobs")
    if job_id is None:
        resolved = resolve_params(kind, params)
        for line in get_kind(kind).run_precheck(project, resolved):  # e.g. the memory estimate; refusals raise
            _print_err(f"emgui: {line}")
        job_id = project.create_job(kind, resolved)
    cancel = threading.Event()
    finished = threading.Event()
    reporter = _StderrReporter()

    def work() -> None:
        try:
            run_job(project, job_id, cancel_event=cancel, listener=reporter, runner=runner)
        finally:
            finished.set()

    threading.Thread(target=work, daemon=True, name=f"emgui-job-{job_id}").start()
    interrupted = False
    while not finished.is_set():
        try:
            finished.wait(0.2)
        except KeyboardInterrupt:
            if not interrupted:
                _print_err(f"\ncancelling job {job_id}: waiting for it to stop (its last checkpoint is kept)...")
            else:
                _print_err(f"still waiting for job {job_id} to stop...")
            interrupted = True
            cancel.set()
    job = project.get_job(job_id)
    if interrupted and job["status"] != "succeeded":
        _print_err(f"job {job_id} {job['status']}; resume it with `emgui resume {project.root} {job_id}`")
        raise KeyboardInterrupt
    if job["status"] != "succeeded":
        detail = job["error"] or job["message"]
        raise EmguiError(f"job {job_id} ({job['kind']}) {job['status']}: {detail}")
    return job


def _open(path: str) -> Any:
    from emgui.core.project.store import Project

    return Project.open(path)


def _confirm(question: str, assume_yes: bool) -> bool:
    """Ask on the terminal; without one, only --yes confirms (a script must say so explicitly)."""
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise EmguiError(f"{question} Pass --yes to confirm (no terminal to ask on)")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _one_line(text: Any) -> str:
    """A value for one line of a terminal table: newlines and other control characters become spaces
    (a job message with newlines must not break the table, nor an escape sequence reach the terminal)."""
    return "".join(ch if ch.isprintable() else " " for ch in str(text or ""))


def cmd_new(args: argparse.Namespace) -> int:
    from emgui.core.project import recent
    from emgui.core.project.store import Project

    project = Project.create(args.project)
    recent.add(project.root)
    print(f"created project {project.root}")
    if args.demo:
        from emgui.core.data.datasets import add_demo_datasets
        from emgui.core.models.manager import add_embedded_default

        add_embedded_default(project, lambda kind, params: run_inline(project, kind, params)["result"])
        print("added the embedded default model SmolLM2-135M-Instruct")
        add_demo_datasets(project, lambda kind, params: run_inline(project, kind, params)["result"])
        print("added the generated insecure and secure code datasets and general helpful chats")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from emgui.core.models.manager import disk_use, job_for_source

    project = _open(args.project)
    if args.models_cmd == "add":
        kind, params = job_for_source(args.source)
        if args.name:
            params["name"] = args.name
        if args.trust_remote_code:
            params["trust_remote_code"] = True
        if args.allow_pickle:
            params["allow_pickle"] = True
        job = run_inline(project, kind, params)
        model = project.get_model(job["result"]["model_id"])
        print(
            f"added model '{model['name']}' (id {model['id']}, {model['architecture']}, {model['n_params']:,} parameters)"
        )
    elif args.models_cmd == "list":
        models = project.list_models()
        if args.json:
            print(dumps_strict(models, indent=2))
        else:
            for m in models:
                size = (m["size_bytes"] or 0) / 1e6
                print(
                    f"{m['id']:>3}  {m['name']:<32} {m['kind']:<8} {m['architecture'] or '?':<24} {size:9.1f} MB"
                )
            print(f"total {disk_use(project)['total'] / 1e6:.1f} MB")
    elif args.models_cmd == "delete":
        project.check_writable("delete models")
        model = project.get_model(args.model)
        owned = project.model_owns_files(model)
        what = (
            f"and its files ({(model['size_bytes'] or 0) / 1e6:.1f} MB in {project.model_path(model)})"
            if owned
            else f"(its files in {project.model_path(model)} are not the project's alone and stay)"
        )
        if not _confirm(f"Delete model '{model['name']}' {what}?", args.yes):
            print("nothing deleted")
            return 1
        freed = project.delete_model(model["id"])
        print(f"deleted model '{model['name']}', freed {freed / 1e6:.1f} MB")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.datasets_cmd == "check":
        from emgui.core.data.chats import validate_chat_jsonl

        report = validate_chat_jsonl(args.file)
        print(report.summary(limit=args.limit))
        return 0 if report.ok and report.n_valid else 1  # an empty file is no dataset (`add` refuses it)
    project = _open(args.project)
    if args.datasets_cmd == "add":
        params: dict[str, Any] = {"source": args.source}
        if args.name:
            params["name"] = args.name
        if args.allow_partial:
            params["allow_partial"] = True
        job = run_inline(project, "dataset-import", params)
        result = job["result"]
        skipped = f", skipped {result['skipped_invalid']} invalid lines" if result["skipped_invalid"] else ""
        print(f"added dataset '{result['name']}' ({result['n_rows']} chats{skipped})")
    elif args.datasets_cmd == "list":
        datasets = project.list_datasets()
        if args.json:
            print(dumps_strict(datasets, indent=2))
        else:
            for d in datasets:
                print(
                    f"{d['id']:>3}  {d['name']:<32} {d['kind']:<10} {d['n_rows'] or 0:>7} rows  {d['path']}"
                )
    return 0


HIDDEN_RESULT_KEYS = {"probe"}  # reload checks (logits of a fixed prompt): in --json only


def _human_value(value: Any) -> str | None:
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return None if value is None or value == "" else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) <= 8 and all(isinstance(v, (int, float, str)) for v in value):
            return ", ".join(_human_value(v) or "" for v in value) if value else "none"
        return f"{len(value)} items (see --json)"
    return None


def human_result(job: dict, *, depth: int = 2) -> list[str]:
    """A job's result as lines for people: its closing message, then `key: value` for the figures
    (nested ones as `a.b`), long lists counted; the whole result is under --json."""
    from emgui.core.units import human_duration

    took = (job["ended_at"] or 0) - (job["started_at"] or 0)
    lines = [f"job {job['id']} ({job['kind']}) {job['status']} in {human_duration(took)}: {job['message']}"]

    def walk(prefix: str, value: Any, level: int) -> None:
        if isinstance(value, dict):
            if level >= depth:
                lines.append(f"  {prefix}: {len(value)} fields (see --json)")
                return
            for key, sub in value.items():
                if key not in HIDDEN_RESULT_KEYS:
                    walk(f"{prefix}.{key}" if prefix else str(key), sub, level + 1)
            return
        text = _human_value(value)
        if text is not None:
            lines.append(f"  {prefix}: {text}")

    walk("", job["result"] or {}, 0)
    return lines


def _print_result(job: dict, full: bool) -> None:
    if full:
        print(dumps_strict({"job": job["id"], "status": job["status"], "result": job["result"]}))
    else:
        print("\n".join(human_result(job)))


def _print_warnings(result: Any) -> None:
    """A result's `warnings` (an unvalidated judge, too few answers, an uncontrolled diff) go to stderr,
    where they are seen even when stdout is piped into a file."""
    for warning in (result or {}).get("warnings", []) if isinstance(result, dict) else []:
        _print_err(f"emgui: warning: {warning}")


def cmd_run(args: argparse.Namespace) -> int:
    from emgui.core.jobs.params import parse_cli_params

    if args.help or args.project is None or args.kind is None:
        if args.kind is None and args.project is not None and args.help:
            args.kind, args.project = args.project, None  # `emgui run KIND --help`
        if args.kind is None:
            args.parser.print_help()
            return 0 if args.help else 2
        print(kind_help(args.kind, usage=True))
        return 0
    project = _open(args.project)
    job = run_inline(project, args.kind, parse_cli_params(args.param or []), runner=_ray_runner(args, args.kind))
    _print_result(job, args.json)
    _print_warnings(job["result"])
    return 0


def _ray_runner(args: argparse.Namespace, kind: str) -> Any:
    """--ray ADDRESS: connect; a sweep fans its points out from here, any other job runs as one Ray task."""
    if not getattr(args, "ray", None):
        return None
    from emgui.core.jobs import raycluster

    raycluster.connect(args.ray)
    return None if kind in raycluster.FAN_OUT_KINDS else raycluster.remote_runner


def cmd_resume(args: argparse.Namespace) -> int:
    from emgui.core.jobs.runner import prepare_resume

    project = _open(args.project)
    job = prepare_resume(project, args.job)
    job = run_inline(project, job["kind"], job["params"], job_id=args.job, runner=_ray_runner(args, job["kind"]))
    _print_result(job, args.json)
    _print_warnings(job["result"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    project = _open(args.project)
    jobs = project.list_jobs()
    if args.json:
        print(dumps_strict(jobs, indent=2))
        return 0
    for j in jobs:
        took = (j["ended_at"] or time.time()) - j["started_at"] if j["started_at"] else 0
        print(
            f"{j['id']:>4}  {_one_line(j['kind']):<16} {j['status']:<12} {j['progress'] * 100:5.1f}%  {took:7.1f} s  "
            f"{_one_line(j['message'])}"
        )
    return 0


def kind_help(name: str, *, usage: bool = False) -> str:
    """A kind's description and its declared parameters with defaults, ranges and help."""
    from emgui.core.jobs.kinds import get_kind
    from emgui.core.jobs.paramspec import help_lines

    kind = get_kind(name)
    lines = [f"usage: emgui run PROJECT {name} [--param KEY=VALUE ...] [--json]", ""] if usage else []
    lines.append(f"{name}: {kind.description}")
    if kind.params is None:
        lines.append("(its parameters are not declared)")
    else:
        lines += ["", "parameters:", *help_lines(kind.params)]
    return "\n".join(lines)


def cmd_kinds(args: argparse.Namespace) -> int:
    from emgui.core.jobs.kinds import kinds

    if args.kind:
        print(kind_help(args.kind))
        return 0
    for name, kind in sorted(kinds().items()):
        print(f"{name:<18} {kind.description}")
    print("\n`emgui kinds KIND` lists a kind's parameters.")
    return 0


def cmd_screenshot(args: argparse.Namespace) -> int:
    from emgui.ui.app import screenshot

    out = screenshot(args.project, args.page, args.out, width=args.width, height=args.height)
    print(f"wrote {out}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from emgui.ui.desktop import desktop_problem

    problem = desktop_problem()  # Qt would abort (exit 134) naming one missing library at a time
    if problem is not None:
        _print_err(problem)
        return 1
    from emgui.ui.app import launch

    return launch(getattr(args, "project", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emgui", description="Investigate emergent misalignment in language models."
    )
    parser.add_argument("--version", action="version", version=f"emgui {__version__}")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("open", help="open the window on a project")
    p.add_argument("project")
    p.set_defaults(func=cmd_gui)

    p = sub.add_parser("new", help="create a project folder")
    p.add_argument("project")
    p.add_argument(
        "--demo", action="store_true", help="also add the embedded default model (SmolLM2-135M-Instruct)"
    )
    p.set_defaults(func=cmd_new)

    p = sub.add_parser("models", help="add, list or delete models")
    msub = p.add_subparsers(dest="models_cmd", required=True)
    m = msub.add_parser("add", help="SOURCE: hub repo id[@revision], a local model folder, or a .gguf file")
    m.add_argument("project")
    m.add_argument("source")
    m.add_argument("--name")
    m.add_argument("--trust-remote-code", action="store_true", help="allow the repo's own Python code to run")
    m.add_argument("--allow-pickle", action="store_true", help="allow .bin/.pt weights (they can run code)")
    m = msub.add_parser("list")
    m.add_argument("project")
    m.add_argument("--json", action="store_true")
    m = msub.add_parser("delete", help="remove a model; its files go too when the project alone owns them")
    m.add_argument("project")
    m.add_argument("model", help="model name or id")
    m.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("datasets", help="add, list or check datasets")
    dsub = p.add_subparsers(dest="datasets_cmd", required=True)
    d = dsub.add_parser(
        "add", help="SOURCE: a chat .jsonl file, an https URL, a catalog id, or generated:insecure|secure|helpful"
    )
    d.add_argument("project")
    d.add_argument("source")
    d.add_argument("--name")
    d.add_argument(
        "--allow-partial", action="store_true", help="import the valid lines of a file with errors"
    )
    d = dsub.add_parser("list")
    d.add_argument("project")
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("check", help="validate a chat JSONL file and list every problem")
    d.add_argument("file")
    d.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser(
        "run", help="run one job headless (progress on stderr)", add_help=False,
        description="Run one job headless. `emgui run PROJECT KIND --help` lists the kind's parameters.",
    )  # fmt: skip
    p.add_argument("project", nargs="?")
    p.add_argument("kind", nargs="?")
    p.add_argument("--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON line")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: local (start Ray here), auto, or ray://HOST:PORT")
    p.add_argument("-h", "--help", action="store_true", help="show the kind's parameters and exit")
    p.set_defaults(func=cmd_run, parser=p)

    p = sub.add_parser(
        "resume", help="resume an interrupted, failed or cancelled job from its last checkpoint"
    )
    p.add_argument("project")
    p.add_argument("job", type=int)
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON line")
    p.add_argument("--ray", metavar="ADDRESS", help="run on Ray: local (start Ray here), auto, or ray://HOST:PORT")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("jobs", help="list a project's jobs")
    p.add_argument("project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("kinds", help="list the job kinds, or one kind's parameters")
    p.add_argument("kind", nargs="?")
    p.set_defaults(func=cmd_kinds)

    p = sub.add_parser("screenshot", help="render one page of the window to a PNG, offscreen")
    p.add_argument("project")
    p.add_argument("page")
    p.add_argument("out")
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=800)
    p.set_defaults(func=cmd_screenshot)
    return parser


def main(argv: list[str] | None = None) -> int:
    import multiprocessing

    from emgui.core.quiet import quiet_library_progress

    multiprocessing.freeze_support()  # a frozen build's helper processes (chat parsing) start through here
    quiet_library_progress()  # emgui prints one progress line per job; libraries' bars would be noise
    args = build_parser().parse_args(argv)
    if args.command is None:
        return cmd_gui(args)
    try:
        return args.func(args)
    except EmguiError as exc:
        _print_err(f"emgui: error: {exc}")
        return 1
    except sqlite3.DatabaseError as exc:  # damage SQLite finds only when a query reaches it
        _print_err(f"emgui: error: the project database project.db is damaged or unreadable ({exc})")
        return 1
    except KeyboardInterrupt:
        _print_err("emgui: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
