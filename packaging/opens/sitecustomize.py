"""Records the files a Python process reads under given folders (loaded through PYTHONPATH by
packaging/check_data_files.py; it does nothing unless EMGUI_OPEN_LOG is set).

Every read of a file under one of EMGUI_OPEN_ROOTS (os.pathsep-separated) is appended to EMGUI_OPEN_LOG
as "open\t<path>", each entry point loaded as "entry-point\t<group>\t<value>", and at exit every shared
library the process has mapped from those folders (Qt plugins, extension modules) as "lib\t<path>". Child processes inherit the variables, so a job that runs
`python -m bandit` is recorded too.
"""

import os
import sys


def _install() -> None:
    log_path = os.environ.get("EMGUI_OPEN_LOG")
    roots = tuple(
        os.path.join(os.path.realpath(r), "") for r in os.environ.get("EMGUI_OPEN_ROOTS", "").split(os.pathsep) if r
    )
    if not log_path or not roots:
        return
    # One descriptor opened before the hook exists: the hook's own writes must not raise "open" events.
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    seen = set()
    write_modes = frozenset("wax+")

    def emit(kind: str, path: str) -> None:
        if (kind, path) not in seen:
            seen.add((kind, path))
            os.write(log, f"{kind}\t{path}\n".encode("utf-8", "surrogateescape"))

    def hook(event: str, args: tuple) -> None:
        if event != "open":
            return
        path, mode, flags = args
        if isinstance(path, int):
            return  # a file descriptor, not a name
        if mode is None:  # os.open: only flags
            if flags & (os.O_WRONLY | os.O_RDWR):
                return
        elif write_modes.intersection(mode):
            return
        try:
            name = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if name.startswith(roots):
            emit("open", name)

    def mapped_libraries() -> None:
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as maps:
                for line in maps:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and parts[5].strip().startswith(roots):
                        emit("lib", os.path.realpath(parts[5].strip()))
        except OSError:
            pass  # not Linux: no shared-library record

    import atexit

    atexit.register(mapped_libraries)
    _record_entry_points(emit)
    sys.addaudithook(hook)


def _record_entry_points(emit) -> None:
    """Log each entry point loaded ("entry-point\tgroup\tvalue"): the plugins a library finds through
    package metadata (Bandit's formatters and tests, keyring's backends). Listing entry points reads every
    distribution's entry_points.txt, so those reads alone do not say which ones are needed."""
    import importlib.metadata
    import importlib.util

    modules = [importlib.metadata]
    if importlib.util.find_spec("importlib_metadata") is not None:
        import importlib_metadata

        modules.append(importlib_metadata)
    for module in modules:
        original = module.EntryPoint.load

        def load(self, _original=original):
            emit("entry-point", f"{self.group}\t{self.value}")
            return _original(self)

        module.EntryPoint.load = load


_install()
