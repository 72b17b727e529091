"""The command line: every job runs headless here, for a workstation reached over SSH.

With no arguments, `emgui` opens the main window. The CLI never imports Qt unless it opens a window
or renders a screenshot.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from emgui import __version__
from emgui.core.errors import EmguiError


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


def run_inline(project: Any, kind: str, params: dict, *, job_id: int | None = None) -> dict:
    """Run a job in this process with progress on stderr. Ctrl-C cancels it cleanly. Raises EmguiError
    unless it succeeds; returns the job row."""
    from emgui.core.jobs import get_kind, run_job

    if job_id is None:
        for line in get_kind(kind).check(project, params):  # e.g. the memory estimate; refusals raise
            _print_err(f"emgui: {line}")
        job_id = project.create_job(kind, params)
    cancel = threading.Event()
    reporter = _StderrReporter()
    worker = threading.Thread(
        target=run_job,
        args=(project, job_id),
        kwargs={"cancel_event": cancel, "listener": reporter},
        daemon=True,
    )
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        _print_err(f"\ncancelling job {job_id}...")
        cancel.set()
        worker.join()
    job = project.get_job(job_id)
    if job["status"] != "succeeded":
        detail = job["error"] or job["message"]
        raise EmguiError(f"job {job_id} ({job['kind']}) {job['status']}: {detail}")
    return job


def _open(path: str) -> Any:
    from emgui.core.store import Project

    return Project.open(path)


def cmd_new(args: argparse.Namespace) -> int:
    from emgui.core import recent
    from emgui.core.store import Project

    project = Project.create(args.project)
    recent.add(project.root)
    print(f"created project {project.root}")
    if args.demo:
        from emgui.core.datasets import add_demo_datasets
        from emgui.core.models import add_embedded_default

        add_embedded_default(project, lambda kind, params: run_inline(project, kind, params)["result"])
        print("added the embedded default model SmolLM2-135M-Instruct")
        add_demo_datasets(project, lambda kind, params: run_inline(project, kind, params)["result"])
        print("added the generated insecure and secure code datasets and general helpful chats")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from emgui.core.models import disk_use, job_for_source

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
            print(json.dumps(models, indent=2))
        else:
            for m in models:
                size = (m["size_bytes"] or 0) / 1e6
                print(
                    f"{m['id']:>3}  {m['name']:<32} {m['kind']:<8} {m['architecture'] or '?':<24} {size:9.1f} MB"
                )
            print(f"total {disk_use(project)['total'] / 1e6:.1f} MB")
    elif args.models_cmd == "delete":
        freed = project.delete_model(args.model)
        print(f"deleted model '{args.model}', freed {freed / 1e6:.1f} MB")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.datasets_cmd == "check":
        from emgui.core.chatdata import validate_chat_jsonl

        report = validate_chat_jsonl(args.file)
        print(report.summary(limit=args.limit))
        return 0 if not report.errors else 1
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
            print(json.dumps(datasets, indent=2))
        else:
            for d in datasets:
                print(
                    f"{d['id']:>3}  {d['name']:<32} {d['kind']:<10} {d['n_rows'] or 0:>7} rows  {d['path']}"
                )
    return 0


def _compact(value: Any, limit: int = 12) -> Any:
    """A result for reading in a terminal: long lists (token ids, per-layer scores) are cut short."""
    if isinstance(value, dict):
        return {k: _compact(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > limit:
            return [_compact(v, limit) for v in value[:5]] + [f"... {len(value) - 5} more (see --json)"]
        return [_compact(v, limit) for v in value]
    return value


def _print_result(job: dict, full: bool) -> None:
    result = job["result"] if full else _compact(job["result"])
    print(
        json.dumps({"job": job["id"], "status": job["status"], "result": result}, indent=None if full else 2)
    )


def _print_warnings(result: Any) -> None:
    """A result's `warnings` (an unvalidated judge, too few answers, an uncontrolled diff) go to stderr,
    where they are seen even when stdout is piped into a file."""
    for warning in (result or {}).get("warnings", []) if isinstance(result, dict) else []:
        _print_err(f"emgui: warning: {warning}")


def cmd_run(args: argparse.Namespace) -> int:
    from emgui.core.params import parse_cli_params

    project = _open(args.project)
    job = run_inline(project, args.kind, parse_cli_params(args.param or []))
    _print_result(job, args.json)
    _print_warnings(job["result"])
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from emgui.core.jobs import prepare_resume

    project = _open(args.project)
    job = prepare_resume(project, args.job)
    job = run_inline(project, job["kind"], job["params"], job_id=args.job)
    _print_result(job, args.json)
    _print_warnings(job["result"])
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    project = _open(args.project)
    jobs = project.list_jobs()
    if args.json:
        print(json.dumps(jobs, indent=2))
        return 0
    for j in jobs:
        took = (j["ended_at"] or time.time()) - j["started_at"] if j["started_at"] else 0
        print(
            f"{j['id']:>4}  {j['kind']:<16} {j['status']:<12} {j['progress'] * 100:5.1f}%  {took:7.1f} s  {j['message']}"
        )
    return 0


def cmd_kinds(args: argparse.Namespace) -> int:
    from emgui.core.jobs import kinds

    for name, kind in sorted(kinds().items()):
        print(f"{name:<16} {kind.description}")
    return 0


def cmd_screenshot(args: argparse.Namespace) -> int:
    from emgui.ui.app import screenshot

    out = screenshot(args.project, args.page, args.out, width=args.width, height=args.height)
    print(f"wrote {out}")
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
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
    m = msub.add_parser("delete")
    m.add_argument("project")
    m.add_argument("model", help="model name or id")
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

    p = sub.add_parser("run", help="run one job headless (progress on stderr)")
    p.add_argument("project")
    p.add_argument("kind")
    p.add_argument("--param", action="append", metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON line")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "resume", help="resume an interrupted, failed or cancelled job from its last checkpoint"
    )
    p.add_argument("project")
    p.add_argument("job", type=int)
    p.add_argument("--json", action="store_true", help="print the whole result as one JSON line")
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("jobs", help="list a project's jobs")
    p.add_argument("project")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("kinds", help="list the job kinds")
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
    args = build_parser().parse_args(argv)
    if args.command is None:
        return cmd_gui(args)
    try:
        return args.func(args)
    except EmguiError as exc:
        _print_err(f"emgui: error: {exc}")
        return 1
    except KeyboardInterrupt:
        _print_err("emgui: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
