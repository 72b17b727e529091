"""Does the PyInstaller bundle carry every data file emgui and its libraries read at run time?

The check runs the loop on the tiny test model (packaging/opens/workload.py) with an audit hook that records
each file read under site-packages and under emgui's resources/ folder, then compares those files with

* `--spec` (the default, cheap: CI runs it): the data files `packaging/emgui.spec` collects, computed by
  running the spec with PyInstaller's build steps replaced by stand-ins, so nothing is built; or
* `--bundle DIR` (after a build; the smoke test runs it): the files in the built bundle, DIR being
  `dist/emgui`. This mode also checks the shared libraries the run loaded (Qt plugins among them).

Python modules are left out: PyInstaller finds those by analysing imports. Exit status 1 lists what is
missing, each with the bundle path it needs.

    python packaging/check_data_files.py [--spec packaging/emgui.spec | --bundle dist/emgui] [--record FILE]
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "packaging" / "emgui.spec"
OPENS = REPO / "packaging" / "opens"

# Files PyInstaller handles itself (by import analysis or as binaries), never as data files.
CODE_SUFFIXES = {".py", ".pyc", ".pyi", ".pth", ".so", ".pyd", ".dylib", ".dll"}


def read_roots() -> dict[Path, Path]:
    """Folders whose reads are recorded, each mapped to the folder its bundle paths are relative to:
    site-packages (bundle path = path inside site-packages) and resources/ (bundle path = resources/...)."""
    site = {Path(os.path.realpath(sysconfig.get_paths()[k])) for k in ("purelib", "platlib")}
    roots = {folder: folder for folder in site}
    roots[Path(os.path.realpath(REPO / "resources"))] = Path(os.path.realpath(REPO))
    return roots


def record_reads(workdir: Path, log: Path, python: str = sys.executable) -> None:
    """Run the workload in a child Python whose sitecustomize records reads into `log`. Its output is
    shown only when it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(OPENS)] + [p for p in [env.get("PYTHONPATH")] if p])
    env["EMGUI_OPEN_LOG"] = str(log)
    env["EMGUI_OPEN_ROOTS"] = os.pathsep.join(str(r) for r in read_roots())
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / "workload.out"
    with output.open("w") as out:
        run = subprocess.run(
            [python, str(OPENS / "workload.py"), str(workdir)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    if run.returncode != 0:
        tail = output.read_text(errors="replace").splitlines()[-60:]
        raise SystemExit("the recorded run failed:\n" + "\n".join(tail))


def parse_record(text: str, roots: dict[Path, Path]) -> tuple[set[str], set[str]]:
    """(data files, shared libraries) from a record, as bundle-relative POSIX paths."""
    data: set[str] = set()
    libs: set[str] = set()
    entry_points: set[tuple[str, str]] = set()
    for line in text.splitlines():
        kind, _, rest = line.partition("\t")
        if kind == "entry-point":
            group, _, value = rest.partition("\t")
            entry_points.add((group, value))
            continue
        path = Path(rest)
        base = next((b for r, b in roots.items() if path.is_relative_to(r)), None)
        if base is None or not path.is_file():
            continue
        rel = path.relative_to(base).as_posix()
        if kind == "lib":
            libs.add(rel)
        elif kind == "open" and not _is_code(path) and path.name != "entry_points.txt":
            data.add(rel)  # entry_points.txt: listing entry points reads them all; see below
    data |= _entry_point_files(entry_points, roots)
    return data, libs


def _entry_point_files(loaded: set[tuple[str, str]], roots: dict[Path, Path]) -> set[str]:
    """The entry_points.txt (and METADATA) of each distribution that declares an entry point the run
    loaded: without them the plugin is not found in the bundle."""
    from importlib.metadata import distributions

    out: set[str] = set()
    for dist in distributions():
        if not any((ep.group, ep.value) in loaded for ep in dist.entry_points):
            continue
        folder = Path(os.path.realpath(dist._path))  # no public API names the dist-info folder
        base = next((b for r, b in roots.items() if folder.is_relative_to(r)), None)
        if base is not None:
            out |= {(folder / n).relative_to(base).as_posix() for n in ("entry_points.txt", "METADATA")}
    return out


def _is_code(path: Path) -> bool:
    return (
        path.suffix in CODE_SUFFIXES
        or ".so." in path.name
        or "__pycache__" in path.parts
        or path.name == "RECORD"  # pip's install record, read by pip and importlib only for uninstalling
    )


def spec_datas(spec: Path = SPEC) -> list[tuple[str, str]]:
    """The `datas` the spec hands to Analysis, from running the spec with PyInstaller's build steps
    replaced by stand-ins that only note their arguments."""
    spec = spec.resolve()
    captured: dict = {}

    def analysis(*args, **kwargs):
        captured.update(kwargs)
        return SimpleNamespace(pure=[], scripts=[], binaries=[], datas=[], zipped_data=[])

    def noop(*args, **kwargs):
        return None

    namespace = {
        "__name__": "__main__",
        "__file__": str(spec),
        "SPEC": str(spec),
        "SPECPATH": str(spec.parent),
        "specnm": spec.stem,
        "DISTPATH": str(REPO / "dist"),
        "workpath": str(REPO / "build" / spec.stem),
        "Analysis": analysis,
        "PYZ": noop,
        "EXE": noop,
        "COLLECT": noop,
    }
    # Hidden imports do not change the data files, and computing them imports every package in a
    # child process (a minute here): the stand-in lists none.
    import PyInstaller.utils.hooks as hooks

    with mock.patch.object(hooks, "collect_submodules", lambda *args, **kwargs: []):
        exec(compile(spec.read_text(), str(spec), "exec"), namespace)
    if "datas" not in captured:
        raise SystemExit(f"{spec} calls Analysis without datas=")
    return list(captured["datas"])


def bundle_paths(datas: list[tuple[str, str]]) -> set[str]:
    """The files (bundle-relative POSIX paths) that Analysis's datas put into the bundle."""
    out: set[str] = set()
    for source, dest in datas:
        for match in glob.glob(source) or [source]:
            item = Path(match)
            if item.is_dir():
                out.update(
                    (Path(dest) / f.relative_to(item)).as_posix() for f in item.rglob("*") if f.is_file()
                )
            elif item.is_file():
                out.add((Path(dest) / item.name).as_posix())
    return {os.path.normpath(p) for p in out}


def built_paths(bundle: Path) -> tuple[set[str], set[str]]:
    """(every file path, every file name) in a built one-folder bundle's contents folder."""
    contents = bundle / "_internal" if (bundle / "_internal").is_dir() else bundle
    files = [f for f in contents.rglob("*") if f.is_file() or f.is_symlink()]
    return {f.relative_to(contents).as_posix() for f in files}, {f.name for f in files}


def missing(
    data: set[str], libs: set[str], have: set[str], have_names: set[str] | None = None
) -> list[str]:
    """Recorded files the bundle lacks. Shared libraries count as present under any folder (PyInstaller
    may place a library beside the one that needs it), and only when `have_names` is given."""
    lost = sorted(p for p in data if p not in have)
    if have_names is not None:
        lost += sorted(p for p in libs if p not in have and Path(p).name not in have_names)
    return lost


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--spec", type=Path, default=SPEC, help="the spec whose data files to check")
    target.add_argument("--bundle", type=Path, help="a built bundle (dist/emgui) to check instead")
    parser.add_argument("--record", type=Path, help="keep the record of reads in FILE, or reuse FILE if it exists")
    args = parser.parse_args(argv)

    roots = read_roots()
    with tempfile.TemporaryDirectory(prefix="emgui-reads-") as tmp:
        log = args.record
        if log is None or not log.exists():
            fresh = Path(tmp) / "reads.log"
            record_reads(Path(tmp) / "work", fresh)
            log = shutil.move(fresh, log) if log else fresh
        data, libs = parse_record(log.read_text(encoding="utf-8", errors="surrogateescape"), roots)
    if args.bundle:
        have, names = built_paths(args.bundle)
        lost = missing(data, libs, have, names)
        where = f"the bundle {args.bundle}"
    else:
        lost = missing(data, libs, bundle_paths(spec_datas(args.spec)))
        where = str(args.spec)
    print(f"{len(data)} data files and {len(libs)} shared libraries read under {', '.join(map(str, roots))}")
    if lost:
        print(f"{len(lost)} of them are missing from {where}:")
        for path in lost:
            print(f"  {path}")
        return 1
    print(f"all of them are in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
