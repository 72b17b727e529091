"""Download model repos from the Hugging Face hub into the standard HF cache.

The files land where huggingface_hub puts them (`{cache}/models--org--name/blobs|snapshots|refs`), so models are
shared with transformers and other tools, but the transfer is our own loop rather than `snapshot_download`:
huggingface_hub 2.4 deletes a partial file when a download fails, and its progress, retries and cancellation
cannot be steered from a GUI. Here:

- a partial file is kept as `blobs/{etag}.incomplete` and the next call resumes it with a Range request;
- cancellation takes effect within ~0.1 s, even when the connection hangs (the socket is read in a helper
  thread while this thread writes the file and polls `should_cancel`);
- transient failures (connection errors, timeouts, 408/429/5xx) are retried with exponential back-off;
- every file is checked against the hub's sha256 (LFS) or git object id before it is moved into `blobs/`;
- the snapshot's links are made only once every file is in `blobs/`, so an interrupted download never leaves
  a snapshot folder that looks complete.

huggingface_hub is imported inside functions: it costs ~0.3 s, which the window's start-up should not pay.
"""

from __future__ import annotations

import errno
import hashlib
import os
import queue
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from emgui.core.errors import Cancelled, EmguiError

KEYRING_SERVICE = "emgui"
KEYRING_USERNAME = "hf_token"
DEFAULT_REVISION = "main"

# Weight formats that unpickle (and so can run code) when loaded, and other frameworks' weights we never need.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
OTHER_WEIGHT_SUFFIXES = (".h5", ".msgpack", ".onnx", ".onnx_data", ".ot", ".tflite", ".mlmodel")

PROGRESS_INTERVAL = 0.1  # seconds between progress callbacks (at most ~10 per second)
CONNECT_TIMEOUT = 15.0
READ_TIMEOUT = 60.0  # a stalled transfer is retried after this long; cancellation does not wait for it
SPACE_MARGIN = 16 * 1024 * 1024  # filesystems need some room beyond the files' own bytes
MAX_BACKOFF = 60.0
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_POLL = 0.05


# ---------------------------------------------------------------------------------------------------- errors
class HubError(EmguiError):
    """A hub download failed; the message names the repo (and revision or file)."""


class RepoNotFoundError(HubError):
    pass


class RevisionNotFoundError(RepoNotFoundError):
    pass


class GatedRepoError(HubError):
    pass


class UnauthorizedError(HubError):
    pass


class PrivateOrMissingRepoError(RepoNotFoundError, UnauthorizedError):
    """Without a token the hub answers 401 both for a private repo and for one that does not exist."""


class DiskFullError(HubError):
    pass


class HubOfflineError(HubError):
    pass


class PickleWeightsError(HubError):
    pass


# ---------------------------------------------------------------------------------------------------- specs
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def parse_repo_spec(spec: str) -> tuple[str, str | None]:
    """Split "org/name@revision" into ("org/name", "revision"); the revision is None when absent."""
    text = spec.strip()
    repo_id, sep, revision = text.partition("@")
    if not _valid_repo_id(repo_id) or (sep and not _valid_revision(revision.strip())):
        raise HubError(f"'{spec}' is not a hub model id: expected 'org/name' or 'org/name@revision'")
    return repo_id, (revision.strip() or None)


def looks_like_repo_id(spec: str) -> bool:
    """True for "org/name" or "org/name@rev" that is not an existing local path."""
    text = spec.strip()
    if not text or Path(text).expanduser().exists() or text.startswith((".", "~", "/", "\\")):
        return False
    repo_id, _, _ = text.partition("@")
    if "/" not in repo_id:
        return False
    try:
        parse_repo_spec(text)
    except HubError:
        return False
    return True


def _valid_revision(revision: str) -> bool:
    """Branch, tag or commit names; they become paths under refs/, so no '..' or absolute paths."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)*", revision)) and ".." not in revision.split("/")


def _valid_repo_id(repo_id: str) -> bool:
    return (
        bool(_REPO_ID.match(repo_id))
        and len(repo_id) <= 96
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith((".git", "."))
    )


# ---------------------------------------------------------------------------------------------------- token
_session_token: str | None = None  # a token the user chose to keep in memory only (no working keyring)


def keep_token_in_memory(token: str | None) -> None:
    """Use this token until the process ends, without storing it anywhere (for systems with no keyring)."""
    global _session_token
    _session_token = token.strip() if token and token.strip() else None


def resolve_token() -> str | None:
    """HF_TOKEN, else a token kept in memory for this session, else the system keyring (emgui / hf_token),
    else huggingface_hub's own login."""
    env = os.environ.get("HF_TOKEN", "").strip()
    if env:
        return env
    if _session_token:
        return _session_token
    try:
        import keyring

        stored = keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
    except Exception:  # no backend, locked keychain, D-Bus trouble...: fall through to the next source
        stored = None
    if stored and stored.strip():
        return stored.strip()
    try:
        from huggingface_hub import get_token

        return get_token() or None
    except Exception:  # e.g. a failing OIDC exchange: treat as "not logged in"
        return None


def store_token(token: str | None) -> bool:
    """Save the token in the system keyring, or delete it for None/"". False when no keyring can hold it."""
    try:
        import keyring
        from keyring.errors import PasswordDeleteError

        if token and token.strip():
            keyring.set_password(KEYRING_SERVICE, KEYRING_USERNAME, token.strip())
        else:
            try:
                keyring.delete_password(KEYRING_SERVICE, KEYRING_USERNAME)
            except PasswordDeleteError:
                pass  # nothing stored: already deleted
    except Exception:  # no usable backend on this system
        return False
    return True


# ---------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int


@dataclass(frozen=True)
class DownloadProgress:
    done: int  # bytes on disk for the selected files (cached and partial ones included)
    total: int
    speed: float  # bytes/s over the last few seconds
    eta: float | None  # seconds, None while the speed is unknown
    file: str  # the file being transferred ("" once finished)


@dataclass(frozen=True)
class _RemoteFile:
    path: str
    size: int
    etag: str  # the blob's name in the cache: the LFS sha256, or the git object id
    sha256: str | None
    git_oid: str | None


@dataclass(frozen=True)
class _Listing:
    commit: str
    files: list[_RemoteFile]
    skipped: list[str]


# ---------------------------------------------------------------------------------------------------- context
@dataclass
class _Ctx:
    repo_id: str
    revision: str
    endpoint: str
    token: str | None
    log_fn: Callable[[str], None] | None
    should_cancel: Callable[[], bool] | None
    max_retries: int
    backoff: float
    # Once resolved, every file is fetched at this commit, as snapshot_download does.
    commit: str | None = None

    @property
    def label(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def log(self, message: str) -> None:
        if self.log_fn is not None:
            self.log_fn(self.redact(message))

    def redact(self, text: str) -> str:
        return text.replace(self.token, "***") if self.token else text

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise Cancelled(f"download of {self.label} cancelled")

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_cancel()
            time.sleep(min(_POLL, left))

    def headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        # token=False: never let huggingface_hub add a token we did not choose (resolve_token already asked it)
        return build_hf_headers(token=self.token or False, library_name="emgui")


def _check_spec(repo_id: str, revision: str) -> None:
    if not _valid_repo_id(repo_id):
        raise HubError(f"'{repo_id}' is not a hub model id: expected 'org/name'")
    if not _valid_revision(revision):
        raise HubError(f"'{revision}' is not a valid revision for '{repo_id}'")


def _make_ctx(repo_id: str, revision: str | None, token: str | None, endpoint: str | None, **kw: Any) -> _Ctx:
    _check_spec(repo_id, revision or DEFAULT_REVISION)
    return _Ctx(
        repo_id=repo_id,
        revision=revision or DEFAULT_REVISION,
        endpoint=_endpoint(endpoint),
        token=token if token is not None else resolve_token(),
        log_fn=kw.get("log"),
        should_cancel=kw.get("should_cancel"),
        max_retries=max(0, kw.get("max_retries", 5)),
        backoff=max(0.0, kw.get("backoff", 1.0)),
    )


def _endpoint(endpoint: str | None) -> str:
    """The explicit endpoint, else HF_ENDPOINT as it is now (huggingface_hub only reads it at import)."""
    if endpoint:
        return endpoint.rstrip("/")
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def _is_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.is_offline_mode() or flag in {"1", "ON", "YES", "TRUE"}


def hub_reachable(timeout: float = 3.0, endpoint: str | None = None) -> bool:
    """Whether the hub answers at all (any HTTP status counts), within `timeout` seconds. False in
    offline mode without trying, so an offline start never waits on the network."""
    if _is_offline():
        return False
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{_endpoint(endpoint)}/api/models?limit=1", timeout=timeout).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False
    return True


def _cache_root(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        from huggingface_hub import constants

        cache_dir = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    return Path(cache_dir).expanduser().resolve()


def _storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


# ---------------------------------------------------------------------------------------------------- errors
def _is_transient(exc: BaseException) -> bool:
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return False
    if isinstance(exc, httpx2.TransportError):
        return True
    if isinstance(exc, HfHubHTTPError):
        return exc.response is not None and exc.response.status_code in TRANSIENT_STATUS
    return False


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return min(float(value), MAX_BACKOFF) if value is not None else None
    except ValueError:
        return None


def _describe(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is not None:
        return f"HTTP {status}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _translate(ctx: _Ctx, exc: BaseException, file: str | None = None) -> HubError:
    """Turn a huggingface_hub / httpx error into a HubError naming the repo, revision and file."""
    from huggingface_hub import errors as hf

    what = f"'{ctx.repo_id}' (revision '{ctx.revision}'{f', file {file}' if file else ''})"
    page = f"{ctx.endpoint}/{ctx.repo_id}"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf.OfflineModeIsEnabled):
        return HubOfflineError(f"cannot download {what}: the hub is offline (HF_HUB_OFFLINE is set)")
    if isinstance(exc, hf.GatedRepoError):
        hint = "log in with a token" if not ctx.token else "use a token of an account that was granted access"
        return GatedRepoError(
            f"{what} is a gated model: request access at {page}, then {hint} (HTTP {status})"
        )
    if isinstance(exc, hf.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"revision '{ctx.revision}' does not exist in '{ctx.repo_id}' on {ctx.endpoint}"
        )
    if isinstance(exc, hf.EntryNotFoundError):
        return RepoNotFoundError(f"{what}: the file does not exist on the hub")
    if status == 401:
        if ctx.token:
            return UnauthorizedError(
                f"the hub refused access to {what} (HTTP 401): the token was rejected, or the repo does not exist "
                "or is private to another account"
            )
        return PrivateOrMissingRepoError(
            f"the hub refused access to {what} (HTTP 401): the repo is private or does not exist. "
            "If it is private, set a Hugging Face token with read access (HF_TOKEN or the token setting)"
        )
    if status == 403:
        return UnauthorizedError(f"the token has no permission to read {what} (HTTP 403)")
    if status == 404 or isinstance(exc, hf.RepositoryNotFoundError):
        return RepoNotFoundError(f"{what} was not found on {ctx.endpoint}: check the model id")
    if _is_transient(exc) and not isinstance(exc, hf.HfHubHTTPError):
        return HubOfflineError(
            f"cannot reach the hub at {ctx.endpoint} for {what}: {ctx.redact(_describe(exc))}"
        )
    if isinstance(exc, hf.HfHubHTTPError):
        return HubError(f"the hub answered HTTP {status} for {what}: {ctx.redact(str(exc).splitlines()[0])}")
    return HubError(f"downloading {what} failed: {ctx.redact(_describe(exc))}")


def _with_retries(ctx: _Ctx, what: str, fn: Callable[[], Any]) -> Any:
    """Call fn, retrying transient failures with exponential back-off; other errors propagate untouched."""
    attempt = 0
    while True:
        ctx.check_cancel()
        try:
            return fn()
        except Cancelled:
            raise
        except Exception as exc:
            if not _is_transient(exc) or attempt >= ctx.max_retries:
                raise
            attempt += 1
            delay = max(min(ctx.backoff * 2 ** (attempt - 1), MAX_BACKOFF), _retry_after(exc) or 0.0)
            ctx.log(f"{what}: {_describe(exc)}; retry {attempt}/{ctx.max_retries} in {delay:.1f} s")
            ctx.sleep(delay)


def _call_cancellable(ctx: _Ctx, fn: Callable[[], Any]) -> Any:
    """Run a blocking call in a helper thread so that cancellation need not wait for its timeout."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller below
            box["error"] = exc

    worker = threading.Thread(target=run, name="emgui-hub-call", daemon=True)
    worker.start()
    while worker.is_alive():
        ctx.check_cancel()
        worker.join(_POLL)
    if "error" in box:
        raise box["error"]
    return box["value"]


# ---------------------------------------------------------------------------------------------------- listing
def _select(
    repo_id: str, files: list[_RemoteFile], allow_pickle: bool
) -> tuple[list[_RemoteFile], list[str]]:
    """Apply the weight policy: safetensors if present, pickle weights only when allowed and needed."""
    names = [f.path.lower() for f in files]
    has_safetensors = any(n.endswith(".safetensors") for n in names)
    pickles = [f for f in files if f.path.lower().endswith(PICKLE_SUFFIXES)]
    if has_safetensors:
        drop = {f.path for f in pickles} | {
            f.path for f in files if f.path.lower().endswith(OTHER_WEIGHT_SUFFIXES)
        }
    elif pickles and not allow_pickle:
        others = any(n.endswith((".gguf", *OTHER_WEIGHT_SUFFIXES)) for n in names)
        if not others:
            shown = ", ".join(f.path for f in pickles[:3]) + (" ..." if len(pickles) > 3 else "")
            raise PickleWeightsError(
                f"'{repo_id}' only has pickle weights ({shown}), which can run arbitrary code when loaded. "
                "Download them only from a publisher you trust, by allowing pickle weights explicitly"
            )
        drop = {f.path for f in pickles}
    else:
        drop = set()
    kept = [f for f in files if f.path not in drop]
    return kept, sorted(drop)


def _fetch_listing(ctx: _Ctx, allow_pickle: bool) -> _Listing:
    from huggingface_hub import HfApi

    api = HfApi(endpoint=ctx.endpoint, token=ctx.token or False, library_name="emgui")

    def info() -> Any:
        return api.model_info(
            ctx.repo_id,
            revision=ctx.revision,
            files_metadata=True,
            timeout=CONNECT_TIMEOUT + READ_TIMEOUT,
            token=ctx.token or False,
        )

    try:
        model = _with_retries(ctx, f"listing {ctx.label}", lambda: _call_cancellable(ctx, info))
    except (Cancelled, HubError):
        raise
    except Exception as exc:
        raise _translate(ctx, exc) from None
    if not model.sha:
        raise HubError(f"the hub did not report a commit for '{ctx.label}'")
    files = [_remote_file(ctx, sibling) for sibling in model.siblings or []]
    if not files:
        raise HubError(f"'{ctx.label}' has no files")
    kept, skipped = _select(ctx.repo_id, files, allow_pickle)
    return _Listing(model.sha, kept, skipped)


def _remote_file(ctx: _Ctx, sibling: Any) -> _RemoteFile:
    path, lfs = sibling.rfilename, sibling.lfs
    etag = lfs.sha256 if lfs is not None else sibling.blob_id
    if etag is None or sibling.size is None:
        raise HubError(f"the hub did not report the size and checksum of {path} in '{ctx.label}'")
    # Both name files on disk: refuse anything that could land outside the cache.
    parts = path.split("/")
    if not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag) or "\\" in path or ".." in parts or "" in parts:
        raise HubError(f"the hub listed an unsafe file name {path!r} in '{ctx.label}'")
    return _RemoteFile(path, int(sibling.size), etag, lfs.sha256 if lfs else None, sibling.blob_id)


def list_repo_files(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    allow_pickle: bool = False,
    endpoint: str | None = None,
) -> list[RepoFile]:
    """The files (and sizes) that download_repo would fetch, after the weight policy."""
    if _is_offline():
        raise HubOfflineError(f"cannot list '{repo_id}': the hub is offline (HF_HUB_OFFLINE is set)")
    ctx = _make_ctx(repo_id, revision, token, endpoint, max_retries=2, backoff=0.5)
    return [RepoFile(f.path, f.size) for f in _fetch_listing(ctx, allow_pickle).files]


# ---------------------------------------------------------------------------------------------------- progress
class _Progress:
    """Byte counts for the whole repo, reported at most every PROGRESS_INTERVAL seconds."""

    def __init__(self, total: int, done: int, callback: Callable[[DownloadProgress], None] | None) -> None:
        self.total, self.done, self.callback = total, done, callback
        self.file = ""
        self._moved = 0  # bytes transferred by this call, for the speed
        self._samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])
        self._last_emit = 0.0

    def add(self, n: int) -> None:
        self.done += n
        self._moved += n
        self.emit()

    def emit(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.callback is None or (not force and now - self._last_emit < PROGRESS_INTERVAL):
            return
        self._last_emit = now
        self._samples.append((now, self._moved))
        while len(self._samples) > 2 and now - self._samples[0][0] > 3.0:
            self._samples.popleft()
        t0, moved0 = self._samples[0]
        speed = (self._moved - moved0) / (now - t0) if now - t0 > 0.05 else 0.0
        eta = (self.total - self.done) / speed if speed > 0 else None
        self.callback(DownloadProgress(self.done, self.total, speed, eta, self.file))


# ---------------------------------------------------------------------------------------------------- transfer
class _Restart(Exception):
    """The partial file cannot be resumed (416, or a server that ignored Range): start the file over."""


def _hash_existing(ctx: _Ctx, path: Path, hasher: Any) -> None:
    with open(path, "rb") as fh:
        while block := fh.read(8 * 1024 * 1024):
            ctx.check_cancel()
            hasher.update(block)


def _new_hasher(f: _RemoteFile) -> Any:
    if f.sha256:
        return hashlib.sha256()
    hasher = hashlib.sha1()  # noqa: S324 - git's object id, a checksum here, not security
    hasher.update(b"blob %d\0" % f.size)
    return hasher


def _stream(ctx: _Ctx, url: str, headers: dict[str, str], on_response: Callable, on_chunk: Callable) -> None:
    """GET url; the socket is read in a helper thread so that this thread can notice cancellation at once."""
    import httpx2
    from huggingface_hub.utils import get_session

    items: queue.Queue = queue.Queue(maxsize=16)
    stop = threading.Event()

    def put(item: tuple) -> None:
        while not stop.is_set():
            try:
                items.put(item, timeout=_POLL)
                return
            except queue.Full:
                continue

    def produce() -> None:
        timeout = httpx2.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT)
        try:
            with get_session().stream("GET", url, headers=headers, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()  # error details for hf_raise_for_status
                put(("response", response))
                if response.status_code < 400:
                    for chunk in response.iter_bytes():  # as received: a sized read would hold bytes back
                        if stop.is_set():
                            return
                        put(("data", chunk))
            put(("end", None))
        except BaseException as exc:  # handed to the consumer
            put(("error", exc))

    threading.Thread(target=produce, name="emgui-hub-read", daemon=True).start()
    try:
        while True:
            ctx.check_cancel()
            try:
                kind, value = items.get(timeout=_POLL)
            except queue.Empty:
                continue
            if kind == "error":
                raise value
            if kind == "end":
                return
            if kind == "response":
                on_response(value)
            else:
                on_chunk(value)
    finally:
        stop.set()


class _FileDownload:
    """One file into blobs/{etag}, resuming blobs/{etag}.incomplete if present."""

    def __init__(self, ctx: _Ctx, f: _RemoteFile, blobs: Path, progress: _Progress) -> None:
        self.ctx, self.f, self.progress = ctx, f, progress
        self.blob = blobs / f.etag
        self.partial = blobs / (f.etag + ".incomplete")
        revision = quote(ctx.commit or ctx.revision, safe="")
        self.url = f"{ctx.endpoint}/{ctx.repo_id}/resolve/{revision}/{quote(f.path)}"
        self.have = 0
        self.hasher = _new_hasher(f)

    def run(self) -> None:
        ctx, f = self.ctx, self.f
        self.progress.file = f.path
        self._open_partial()
        restarted, attempt = False, 0
        while self.have < f.size:
            before = self.have
            try:
                _with_disk_errors(ctx, f, self._attempt)
            except _Restart as exc:
                if restarted:
                    raise HubError(f"{ctx.redact(str(exc))} ('{ctx.label}')") from None
                ctx.log(f"{exc}: starting {f.path} over")
                restarted = True
                self._discard()
            except (Cancelled, HubError):
                raise
            except Exception as exc:
                if not _is_transient(exc):
                    raise _translate(ctx, exc, f.path) from None
                attempt = (
                    0 if self.have > before else attempt
                )  # a transfer that moved data earns fresh retries
                if attempt >= ctx.max_retries:
                    raise HubError(
                        f"downloading {f.path} of '{ctx.label}' failed after {ctx.max_retries + 1} attempts: "
                        f"{ctx.redact(_describe(exc))}. Run it again to resume from {_size(self.have)}"
                    ) from None
                attempt += 1
                delay = max(min(ctx.backoff * 2 ** (attempt - 1), MAX_BACKOFF), _retry_after(exc) or 0.0)
                ctx.log(
                    f"{f.path}: {ctx.redact(_describe(exc))}; retry {attempt}/{ctx.max_retries} in {delay:.1f} s"
                )
                ctx.sleep(delay)
        self._verify()
        os.replace(self.partial, self.blob)

    def _open_partial(self) -> None:
        have = self.partial.stat().st_size if self.partial.exists() else 0
        if have > self.f.size:  # not a prefix of this file
            self.partial.unlink()
            self.progress.done -= self.f.size
            have = 0
        if not self.partial.exists():
            self.partial.touch()  # an empty file has no bytes to fetch but still becomes a blob
        if have:
            self.ctx.log(f"resuming {self.f.path} at {_size(have)} of {_size(self.f.size)}")
            _hash_existing(self.ctx, self.partial, self.hasher)
        else:
            self.ctx.log(f"downloading {self.f.path} ({_size(self.f.size)})")
        self.have = have

    def _attempt(self) -> None:
        headers = self.ctx.headers()
        headers["Accept-Encoding"] = "identity"  # byte ranges and sizes must refer to the file itself
        if self.have:
            headers["Range"] = f"bytes={self.have}-"
        with open(self.partial, "ab") as fh:

            def on_chunk(chunk: bytes) -> None:
                fh.write(chunk)
                self.hasher.update(chunk)
                self.have += len(chunk)
                self.progress.add(len(chunk))

            _stream(self.ctx, self.url, headers, self._check_response, on_chunk)
        if self.have != self.f.size:
            import httpx2

            raise httpx2.RemoteProtocolError(f"{self.f.path}: got {self.have} of {self.f.size} bytes")

    def _check_response(self, response: Any) -> None:
        from huggingface_hub.utils import hf_raise_for_status

        if response.status_code == 416:
            raise _Restart(f"the hub cannot resume {self.f.path} at byte {self.have}")
        hf_raise_for_status(response)
        if self.have and response.status_code != 206:
            raise _Restart(f"the hub ignored the resume request for {self.f.path}")

    def _verify(self) -> None:
        if self.hasher.hexdigest() != (self.f.sha256 or self.f.git_oid):
            self._discard()
            raise HubError(
                f"{self.f.path} of '{self.ctx.label}' does not match the hub's checksum; the partial file was "
                "removed, run the download again"
            )

    def _discard(self) -> None:
        self.partial.unlink(missing_ok=True)
        self.progress.done -= self.have
        self.have = 0
        self.hasher = _new_hasher(self.f)


def _with_disk_errors(ctx: _Ctx, f: _RemoteFile, fn: Callable[[], None]) -> None:
    try:
        fn()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise DiskFullError(
                f"the disk filled up while downloading {f.path} of '{ctx.label}'. Free some space (or choose "
                "another cache folder) and run the download again: it resumes where it stopped"
            ) from None
        raise


# ---------------------------------------------------------------------------------------------------- cache
def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _link(blob: Path, pointer: Path) -> None:
    """Point snapshots/.../file at its blob: a relative symlink like huggingface_hub's, else a hard link or copy."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
        return
    except (OSError, NotImplementedError):  # Windows without developer mode
        pass
    try:
        os.link(blob, pointer)
    except OSError:
        shutil.copyfile(blob, pointer)


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    if revision == commit:
        return
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if ref.exists() and ref.read_text().strip() == commit:
        return
    tmp = ref.with_name(ref.name + f".{os.getpid()}.tmp")
    tmp.write_text(commit)
    os.replace(tmp, ref)


def _cached_commit(storage: Path, revision: str) -> str | None:
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = storage / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None


def _cached_snapshot(cache: Path, repo_id: str, revision: str, allow_pickle: bool) -> Path | None:
    """A complete snapshot of repo_id@revision in the cache, or None.

    Snapshots written by download_repo are complete by construction. For one written by another tool, the tree
    listing huggingface_hub caches beside it (when there is one) tells whether files are missing.
    """
    storage = _storage(cache, repo_id)
    commit = _cached_commit(storage, revision)
    if commit is None:
        return None
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir() or not any(snapshot.iterdir()):
        return None
    present = [
        _RemoteFile(p.relative_to(snapshot).as_posix(), 0, "", None, None)
        for p in snapshot.rglob("*")
        if p.is_file()
    ]
    _select(repo_id, present, allow_pickle)  # refuses a pickle-only snapshot unless allowed
    try:
        from huggingface_hub import get_cached_repo_tree

        tree = get_cached_repo_tree(repo_id, revision=commit, cache_dir=cache)
    except Exception:  # no tree listing cached (or an older huggingface_hub): trust the folder
        return snapshot
    wanted, _ = _select(repo_id, [_RemoteFile(e.path, e.size, "", None, None) for e in tree], allow_pickle)
    have = {p.path for p in present}
    return snapshot if all(w.path in have for w in wanted) else None


# ---------------------------------------------------------------------------------------------------- download
def download_repo(
    repo_id: str,
    revision: str | None = None,
    *,
    token: str | None = None,
    cache_dir: str | Path | None = None,
    allow_pickle: bool = False,
    on_progress: Callable[[DownloadProgress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    log: Callable[[str], None] | None = None,
    max_retries: int = 5,
    backoff: float = 1.0,
    free_space: Callable[[Path], int] | None = None,
    endpoint: str | None = None,
) -> Path:
    """Download repo_id@revision into the HF cache and return its snapshot folder.

    token: None -> resolve_token(). endpoint: None -> HF_ENDPOINT (read now) or huggingface_hub's default.
    Raises HubError subclasses (naming the repo), or Cancelled when should_cancel() turns true.
    """
    cache = _cache_root(cache_dir)
    revision = revision or DEFAULT_REVISION
    _check_spec(repo_id, revision)
    if _is_offline():
        snapshot = _cached_snapshot(cache, repo_id, revision, allow_pickle)
        if snapshot is None:
            raise HubOfflineError(
                f"'{repo_id}' (revision '{revision}') is not in the local cache ({cache}) and the hub is offline "
                "(HF_HUB_OFFLINE is set). Download it once while online, or unset HF_HUB_OFFLINE"
            )
        if log is not None:
            log(f"offline: using the cached snapshot of {repo_id}@{revision} ({snapshot})")
        return snapshot

    ctx = _make_ctx(
        repo_id,
        revision,
        token,
        endpoint,
        log=log,
        should_cancel=should_cancel,
        max_retries=max_retries,
        backoff=backoff,
    )
    ctx.log(f"resolving {ctx.label} on {ctx.endpoint}")
    try:
        listing = _fetch_listing(ctx, allow_pickle)
    except HubError as exc:
        if isinstance(exc, (RepoNotFoundError, GatedRepoError, UnauthorizedError, PickleWeightsError)):
            raise
        snapshot = _cached_snapshot(cache, repo_id, revision, allow_pickle)
        if snapshot is None:
            raise
        ctx.log(f"the hub could not be reached ({exc}); using the cached snapshot {snapshot}")
        return snapshot
    return _download_listing(ctx, cache, listing, on_progress, free_space or _free_bytes)


def _download_listing(
    ctx: _Ctx,
    cache: Path,
    listing: _Listing,
    on_progress: Callable[[DownloadProgress], None] | None,
    free_space: Callable[[Path], int],
) -> Path:
    ctx.commit = listing.commit
    storage = _storage(cache, ctx.repo_id)
    blobs = storage / "blobs"
    snapshot = storage / "snapshots" / listing.commit
    ctx.log(f"{ctx.label} is commit {listing.commit[:12]}: {len(listing.files)} files")
    if listing.skipped:
        ctx.log(
            f"skipping {len(listing.skipped)} pickle/other-framework weight files: {', '.join(listing.skipped)}"
        )

    # A file is there when its blob is, or when its snapshot entry is (huggingface_hub moves the blob into the
    # snapshot where symlinks are not allowed).
    missing = [f for f in listing.files if not (blobs / f.etag).exists() and not (snapshot / f.path).exists()]
    partial = {f.etag: _partial_size(blobs, f) for f in missing}
    total = sum(f.size for f in listing.files)
    needed = sum(f.size - partial[f.etag] for f in missing)
    progress = _Progress(total, total - needed, on_progress)
    if needed:
        free = free_space(blobs)
        if free < needed + SPACE_MARGIN:
            raise DiskFullError(
                f"not enough disk space for '{ctx.label}': it needs {_size(needed)}, only {_size(free)} are free "
                f"in {cache}. Free some space or choose another cache folder"
            )
        blobs.mkdir(parents=True, exist_ok=True)
    progress.emit(force=True)

    for f in missing:
        lock = _lock(ctx, cache / ".locks" / storage.name / f"{f.etag}.lock", f.path)
        try:
            if not (blobs / f.etag).exists():
                _FileDownload(ctx, f, blobs, progress).run()
        finally:
            lock.release()

    for f in listing.files:  # all blobs are in place: only now does the snapshot appear
        if not (snapshot / f.path).exists():  # a dangling link counts as absent and is replaced
            _link(blobs / f.etag, snapshot / f.path)
    _write_ref(storage, ctx.revision, listing.commit)
    progress.file = ""
    progress.emit(force=True)
    ctx.log(f"{ctx.label} is ready in {snapshot}")
    return snapshot


def _lock(ctx: _Ctx, path: Path, what: str) -> Any:
    """huggingface_hub's lock file for a blob, so that a concurrent download of it by either tool waits."""
    import filelock

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path))
    waited = False
    while True:
        ctx.check_cancel()
        try:
            lock.acquire(timeout=0.2)
            return lock
        except filelock.Timeout:
            if not waited:
                ctx.log(f"waiting for another download of {what} to finish")
                waited = True


def _partial_size(blobs: Path, f: _RemoteFile) -> int:
    partial = blobs / (f.etag + ".incomplete")
    try:
        return min(partial.stat().st_size, f.size)
    except OSError:
        return 0
