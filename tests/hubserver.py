"""A local stand-in for the Hugging Face hub, for tests: a real HTTP server on 127.0.0.1.

It serves what huggingface_hub 2.4 needs to list and download a model repo (so both `emgui.core.models.hub`
and huggingface_hub's own `snapshot_download` / `hf_hub_download` work against it):

- `GET /api/models/{org}/{name}[/revision/{rev}]` (model_info; sizes, blob ids and LFS data with `?blobs=true`)
- `GET /api/models/{org}/{name}/tree/{rev}[/{path}]` (list_repo_tree, recursive or not)
- `HEAD`/`GET /{org}/{name}/resolve/{rev}/{path}` with X-Repo-Commit, ETag, X-Linked-Etag, X-Linked-Size,
  Content-Length and Range support (206), optionally redirecting LFS files to a "CDN" on another origin
  (`http://localhost:{port}/cdn/...`, so an Authorization header must not follow the redirect)

Access control mimics the hub: a private repo answers 401 without a token it accepts, a gated repo lets anyone
read its metadata but answers file requests with 401/403 and `X-Error-Code: GatedRepo`. Faults can be injected
(fail with a status N times, drop the connection after N bytes, throttle, stall), and every request is logged
with its headers so tests can assert Range and Authorization headers.

Usage:
    with FakeHub() as hub:
        hub.add_repo("org/tiny", {"config.json": b"{}", "model.safetensors": data})
        download_repo("org/tiny", endpoint=hub.url, ...)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

LFS_MIN_SIZE = 1024  # files at least this big are served as LFS files, like weights on the real hub
_CHUNK = 16 * 1024


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file's content: what the hub reports as `oid`/`blobId` and as the ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        return git_blob_oid(self.data)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def etag(self) -> str:
        """What the blob is named after in the HF cache: the sha256 for LFS files, the git oid otherwise."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile]
    commit: str
    branches: dict[str, str]
    private: bool = False
    gated: bool = False


@dataclass
class Request:
    method: str
    path: str  # without the query string, still URL-encoded
    query: str
    headers: dict[str, str]  # lower-case names
    status: int = 0

    @property
    def range(self) -> str | None:
        return self.headers.get("range")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Fault:
    kind: str  # "status", "drop", "stall" or "hang"
    path_contains: str
    times: int
    status: int = 503
    after_bytes: int = 0
    retry_after: int | None = None
    methods: tuple[str, ...] = ("GET",)


@dataclass
class FakeHub:
    """The server and its state. Start it with `with FakeHub() as hub:` (or `start()` / `stop()`)."""

    cdn_redirect: bool = False  # LFS downloads redirect to http://localhost:{port}/cdn/{sha256}
    throttle: float | None = None  # bytes per second for file bodies, None = as fast as possible
    ignore_range: bool = False  # answer Range requests with the whole file (200), like some proxies
    repos: dict[str, HubRepo] = field(default_factory=dict)
    tokens: dict[str, set[str]] = field(default_factory=dict)  # token -> repo ids it may read
    requests: list[Request] = field(default_factory=list)
    _faults: list[_Fault] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None

    # ---- set-up ----
    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        private: bool = False,
        gated: bool = False,
        branches: tuple[str, ...] = ("main",),
    ) -> HubRepo:
        hub_files = {p: HubFile(p, d, lfs=len(d) >= LFS_MIN_SIZE) for p, d in sorted(files.items())}
        digest = hashlib.sha1(repo_id.encode())
        for f in hub_files.values():
            digest.update(f.path.encode() + b"\0" + f.oid.encode())
        commit = digest.hexdigest()
        repo = HubRepo(repo_id, hub_files, commit, dict.fromkeys(branches, commit), private, gated)
        self.repos[repo_id] = repo
        return repo

    def grant(self, token: str, repo_id: str) -> None:
        self.tokens.setdefault(token, set()).add(repo_id)

    def fail(
        self, path_contains: str, status: int = 503, times: int = 1, retry_after: int | None = None
    ) -> None:
        """Answer the next `times` requests whose path contains `path_contains` with `status`."""
        self._add_fault(
            _Fault(
                "status",
                path_contains,
                times,
                status=status,
                retry_after=retry_after,
                methods=("GET", "HEAD"),
            )
        )

    def drop_after(self, path_contains: str, after_bytes: int, times: int = 1) -> None:
        """Send the headers and `after_bytes` of the body, then close the connection (a broken transfer)."""
        self._add_fault(_Fault("drop", path_contains, times, after_bytes=after_bytes))

    def stall_after(self, path_contains: str, after_bytes: int, times: int = 1) -> None:
        """Send `after_bytes` of the body, then send nothing more until the server stops (a hung transfer)."""
        self._add_fault(_Fault("stall", path_contains, times, after_bytes=after_bytes))

    def hang(self, path_contains: str, times: int = 1) -> None:
        """Accept the next matching request but never answer it (until the server stops)."""
        self._add_fault(_Fault("hang", path_contains, times, methods=("GET", "HEAD")))

    def _add_fault(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and method in fault.methods and fault.path_contains in unquote(path):
                    fault.times -= 1
                    return fault
        return None

    # ---- observation ----
    def requests_for(self, path_contains: str, method: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.requests
                if path_contains in unquote(r.path) and (method is None or r.method == method)
            ]

    # ---- life cycle ----
    @property
    def port(self) -> int:
        assert self._server is not None, "the hub is not started"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-hub", daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def patch_endpoint(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point huggingface_hub's own functions (and HF_ENDPOINT readers) at this server.

        huggingface_hub reads HF_ENDPOINT once, at import, into `constants.ENDPOINT` and the URL template that
        `hf_hub_url` uses, so setting the variable afterwards is not enough: patch both constants too.
        """
        from huggingface_hub import constants

        monkeypatch.setenv("HF_ENDPOINT", self.url)
        monkeypatch.setattr(constants, "ENDPOINT", self.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", self.url + "/{repo_id}/resolve/{revision}/{filename}"
        )


_API_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?/?$")
_API_TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _HubErrorResponse(Exception):
    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep the test output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    # ---- routing ----
    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        record = Request(method, split.path, split.query, {k.lower(): v for k, v in self.headers.items()})
        with self.hub._lock:
            self.hub.requests.append(record)
        fault = self.hub._take_fault(method, split.path)
        try:
            if fault is not None and fault.kind == "status":
                raise _HubErrorResponse(fault.status, None, f"injected {fault.status}")
            if fault is not None and fault.kind == "hang":
                self.hub._stop.wait()
                self.close_connection = True
                return
            if m := _API_INFO.match(split.path):
                self._model_info(record, m, split.query)
            elif m := _API_TREE.match(split.path):
                self._tree(record, m, split.query)
            elif m := _RESOLVE.match(split.path):
                self._resolve(record, m, fault)
            elif m := _CDN.match(split.path):
                self._cdn(record, m, fault)
            else:
                raise _HubErrorResponse(404, None, f"no route for {split.path}")
        except _HubErrorResponse as e:
            extra = {}
            if fault is not None and fault.kind == "status" and fault.retry_after is not None:
                extra["Retry-After"] = str(fault.retry_after)
            self._send_error(record, e, extra)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send_error(self, record: Request, e: _HubErrorResponse, extra: dict[str, str]) -> None:
        body = json.dumps({"error": e.message}).encode()
        record.status = e.status
        self.send_response(e.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if e.code:
            self.send_header("X-Error-Code", e.code)
        self.send_header("X-Error-Message", e.message)
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        if record.method != "HEAD":
            self.wfile.write(body)

    # ---- access control ----
    def _repo(self, raw_repo: str, *, for_files: bool) -> HubRepo:
        repo_id = unquote(raw_repo)
        repo = self.hub.repos.get(repo_id)
        token = self._token()
        known = token is not None and token in self.hub.tokens
        allowed = known and repo_id in self.hub.tokens[token]
        if repo is None or (repo.private and not allowed):
            if token is not None and not known:
                raise _HubErrorResponse(401, None, "Invalid credentials in Authorization header")
            if token is None:
                # Like the hub: without a token, missing and private repos both answer 401 RepoNotFound.
                raise _HubErrorResponse(401, "RepoNotFound", "Invalid username or password.")
            raise _HubErrorResponse(404, "RepoNotFound", "Repository not found")
        if repo.gated and for_files and not allowed:
            if token is None:
                raise _HubErrorResponse(
                    401,
                    "GatedRepo",
                    f"Access to model {repo_id} is restricted. You must have access to it and be authenticated.",
                )
            raise _HubErrorResponse(
                403,
                "GatedRepo",
                f"Access to model {repo_id} is restricted and you are not in the authorized list.",
            )
        return repo

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") else None

    @staticmethod
    def _commit(repo: HubRepo, raw_rev: str | None) -> str:
        rev = unquote(raw_rev) if raw_rev else "main"
        if rev == repo.commit:
            return rev
        if rev in repo.branches:
            return repo.branches[rev]
        raise _HubErrorResponse(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    # ---- API ----
    def _model_info(self, record: Request, m: re.Match, query: str) -> None:
        repo = self._repo(m["repo"], for_files=False)
        commit = self._commit(repo, m["rev"])
        blobs = parse_qs(query).get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in repo.files.values():
            entry: dict = {"rfilename": f.path}
            if blobs:
                entry.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": 134}
            siblings.append(entry)
        info = {
            "_id": "0" * 24,
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": commit,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "tags": [],
            "siblings": siblings,
        }
        self._send_json(record, info)

    def _tree(self, record: Request, m: re.Match, query: str) -> None:
        repo = self._repo(m["repo"], for_files=False)
        self._commit(repo, m["rev"])
        base = unquote(m["path"] or "").strip("/")
        recursive = parse_qs(query).get("recursive", ["false"])[0].lower() == "true"
        prefix = base + "/" if base else ""
        entries: dict[str, dict] = {}
        for f in repo.files.values():
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):  # the folders on the way
                if depth > 1 and not recursive:
                    break
                folder = prefix + "/".join(parts[:depth])
                entries[folder] = {
                    "type": "directory",
                    "oid": git_blob_oid(folder.encode()),
                    "size": 0,
                    "path": folder,
                }
            if len(parts) == 1 or recursive:
                entry = {"type": "file", "oid": f.oid, "size": len(f.data), "path": f.path}
                if f.lfs:
                    entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": 134}
                entries[f.path] = entry
        self._send_json(record, [entries[k] for k in sorted(entries)])

    def _send_json(self, record: Request, payload: object) -> None:
        body = json.dumps(payload).encode()
        record.status = 200
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if record.method != "HEAD":
            self.wfile.write(body)

    # ---- files ----
    def _resolve(self, record: Request, m: re.Match, fault: _Fault | None) -> None:
        repo = self._repo(m["repo"], for_files=True)
        commit = self._commit(repo, m["rev"])
        path = unquote(m["path"])
        f = repo.files.get(path)
        if f is None:
            raise _HubErrorResponse(404, "EntryNotFound", f"{path} does not exist on {m['rev']}")
        headers = {"X-Repo-Commit": commit, "ETag": f'"{f.oid}"', "Accept-Ranges": "bytes"}
        if f.lfs:
            headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data))})
            if self.hub.cdn_redirect:
                headers["ETag"] = f'"{f.sha256}"'
                headers["Location"] = f"http://localhost:{self.hub.port}/cdn/{f.sha256}"
                record.status = 302
                self.send_response(302)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self._send_file(record, f.data, headers, fault)

    def _cdn(self, record: Request, m: re.Match, fault: _Fault | None) -> None:
        for repo in self.hub.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == m["sha"]:
                    self._send_file(
                        record, f.data, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"}, fault
                    )
                    return
        raise _HubErrorResponse(404, None, "no such blob")

    def _send_file(self, record: Request, data: bytes, headers: dict[str, str], fault: _Fault | None) -> None:
        start, end, status = 0, len(data) - 1, 200
        if record.range is not None and not self.hub.ignore_range:
            rm = _RANGE.match(record.range.strip())
            if rm is None or int(rm[1]) >= len(data):
                raise _HubErrorResponse(
                    416, None, f"range {record.range} not satisfiable for {len(data)} bytes"
                )
            start, end, status = int(rm[1]), int(rm[2]) if rm[2] else len(data) - 1, 206
        body = data[start : end + 1]
        record.status = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if record.method == "HEAD":
            return
        limit = (
            len(body)
            if fault is None or fault.kind not in ("drop", "stall")
            else min(fault.after_bytes, len(body))
        )
        self._write_body(body[:limit])
        if limit < len(body):
            assert fault is not None
            if fault.kind == "stall":
                self.hub._stop.wait()
            self.close_connection = True  # the client sees fewer bytes than Content-Length announced

    def _write_body(self, body: bytes) -> None:
        rate = self.hub.throttle
        started = time.monotonic()
        for offset in range(0, len(body), _CHUNK):
            if self.hub._stop.is_set():
                return
            self.wfile.write(body[offset : offset + _CHUNK])
            if rate:
                self.wfile.flush()
                ahead = (offset + _CHUNK) / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)
        self.wfile.flush()


def resolve_url(hub: FakeHub, repo_id: str, filename: str, revision: str = "main") -> str:
    return f"{hub.url}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
