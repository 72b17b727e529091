"""emgui.core.models.hub against a real local HTTP server that speaks enough of the hub's API (tests/hubserver.py)."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import threading
import time
from pathlib import Path

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

from emgui.core.errors import Cancelled
from emgui.core.models import hub
from tests.hubserver import FakeHub, git_blob_oid

MODEL = random.Random(0).randbytes(4_000_000)
CONFIG = b'{"model_type": "llama", "hidden_size": 16}'
TOKENIZER = b'{"version": "1.0", "model": {"type": "BPE"}}' * 40  # > 1 KB: served as an LFS file
PICKLE = b"\x80\x04pickled weights" * 100
FILES = {
    "config.json": CONFIG,
    "tokenizer.json": TOKENIZER,
    "model.safetensors": MODEL,
    "pytorch_model.bin": PICKLE,  # must be skipped: the repo has safetensors
    "nested/generation_config.json": b'{"do_sample": false}',
}
KEPT = {k: v for k, v in FILES.items() if k != "pytorch_model.bin"}
SECRET = "hf_TestSecretToken123456"


class MemoryKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.passwords.pop((service, username), None) is None:
            raise PasswordDeleteError("not stored")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """No token, endpoint or offline flag from the developer's machine; an empty in-memory keyring."""
    from huggingface_hub import constants

    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    previous = keyring.get_keyring()
    memory = MemoryKeyring()
    keyring.set_keyring(memory)
    yield memory
    keyring.set_keyring(previous)


@pytest.fixture
def fake_hub():
    with FakeHub() as server:
        server.add_repo("org/tiny", FILES)
        yield server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "hf-cache"


def _download(server: FakeHub, cache: Path, repo: str = "org/tiny", **kw) -> Path:
    kw.setdefault("backoff", 0.01)
    return hub.download_repo(repo, cache_dir=cache, endpoint=server.url, **kw)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _model_requests(server: FakeHub) -> list:
    return [r for r in server.requests_for("model.safetensors", "GET") if "/resolve/" in r.path]


# ------------------------------------------------------------------------------------------------- download
def test_full_download_lands_in_hf_cache_with_throttled_monotonic_progress(
    fake_hub: FakeHub, cache: Path
) -> None:
    fake_hub.throttle = 8_000_000  # ~0.5 s for the model, so progress has several updates
    events: list[hub.DownloadProgress] = []
    lines: list[str] = []
    started = time.monotonic()
    snapshot = _download(fake_hub, cache, on_progress=events.append, log=lines.append)
    elapsed = time.monotonic() - started

    repo = fake_hub.repos["org/tiny"]
    storage = cache.resolve() / "models--org--tiny"
    assert snapshot == storage / "snapshots" / repo.commit
    assert (storage / "refs" / "main").read_text() == repo.commit
    for path, data in KEPT.items():
        pointer = snapshot / path
        assert pointer.read_bytes() == data
        etag = (
            _sha(data) if len(data) >= 1024 else git_blob_oid(data)
        )  # HF's blob naming: LFS sha256 / git oid
        assert pointer.is_symlink() and pointer.resolve() == storage / "blobs" / etag
    assert not (snapshot / "pytorch_model.bin").exists()
    assert not fake_hub.requests_for("pytorch_model.bin")
    assert not list(storage.rglob("*.incomplete"))
    assert any("pytorch_model.bin" in line for line in lines)

    total = sum(len(d) for d in KEPT.values())
    done = [e.done for e in events]
    assert done == sorted(done) and events[-1].done == events[-1].total == total
    assert all(e.total == total for e in events)
    assert len(events) >= 4, "several updates during a 0.5 s transfer"
    assert len(events) <= elapsed * 10 + 3, "at most ~10 callbacks a second"
    assert any(e.speed > 1e6 and e.eta is not None for e in events[1:-1])
    assert any(e.file == "model.safetensors" for e in events)

    listed = hub.list_repo_files("org/tiny", endpoint=fake_hub.url)
    assert {f.path: f.size for f in listed} == {k: len(v) for k, v in KEPT.items()}


def test_cached_repo_needs_no_transfer_and_huggingface_hub_finds_it(fake_hub: FakeHub, cache: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    first = _download(fake_hub, cache)
    n_file_requests = len(fake_hub.requests_for("/resolve/"))
    events: list[hub.DownloadProgress] = []
    again = _download(fake_hub, cache, on_progress=events.append)
    assert again == first
    assert len(fake_hub.requests_for("/resolve/")) == n_file_requests
    assert events[-1].done == events[-1].total

    # Other tools read the same cache: huggingface_hub resolves our refs, snapshots and blobs offline.
    assert Path(snapshot_download("org/tiny", cache_dir=cache, local_files_only=True)) == first
    config = hf_hub_download("org/tiny", "config.json", cache_dir=cache, local_files_only=True)
    assert Path(config).read_bytes() == CONFIG


def test_same_cache_layout_as_huggingface_hub(fake_hub: FakeHub, tmp_path: Path, monkeypatch) -> None:
    """The fixture is faithful enough for huggingface_hub itself, and both produce the same cache."""
    from huggingface_hub import snapshot_download

    fake_hub.patch_endpoint(monkeypatch)
    theirs = Path(snapshot_download("org/tiny", cache_dir=tmp_path / "theirs", ignore_patterns=["*.bin"]))
    # No endpoint argument: HF_ENDPOINT (set by patch_endpoint after import) is read at call time.
    ours = hub.download_repo("org/tiny", cache_dir=tmp_path / "ours", backoff=0.01)
    assert ours.name == theirs.name
    for path in KEPT:
        assert os.readlink(ours / path) == os.readlink(theirs / path)
    assert sorted(p.name for p in (ours.parents[1] / "blobs").iterdir()) == sorted(
        p.name for p in (theirs.parents[1] / "blobs").iterdir()
    )


# ------------------------------------------------------------------------------------------------- cancel / resume
def test_cancel_mid_file_is_quick_and_next_call_resumes_with_range(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.throttle = 2_000_000
    cancel_at: list[float] = []

    def on_progress(p: hub.DownloadProgress) -> None:
        if p.file == "model.safetensors" and p.done > 1_000_000 and not cancel_at:
            cancel_at.append(time.monotonic())

    with pytest.raises(Cancelled):
        _download(fake_hub, cache, on_progress=on_progress, should_cancel=lambda: bool(cancel_at))
    assert time.monotonic() - cancel_at[0] < 1.0

    storage = cache.resolve() / "models--org--tiny"
    partial = storage / "blobs" / (_sha(MODEL) + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < len(MODEL)
    assert not (storage / "snapshots").exists(), "an interrupted download must not look complete"
    assert not (storage / "blobs" / _sha(MODEL)).exists()

    fake_hub.throttle = None
    lines: list[str] = []
    snapshot = _download(fake_hub, cache, log=lines.append)
    model_gets = _model_requests(fake_hub)
    assert model_gets[-1].range == f"bytes={kept}-" and model_gets[-1].status == 206
    assert _sha((snapshot / "model.safetensors").read_bytes()) == _sha(MODEL)
    assert any("resuming model.safetensors" in line for line in lines)


def test_cancel_while_the_connection_hangs(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.stall_after("model.safetensors", 700_000)
    cancel_at: list[float] = []
    timer = threading.Timer(0.6, lambda: cancel_at.append(time.monotonic()))
    timer.start()
    with pytest.raises(Cancelled):
        _download(fake_hub, cache, should_cancel=lambda: bool(cancel_at))
    # The hung read would only end after READ_TIMEOUT (60 s); cancellation must not wait for it.
    assert time.monotonic() - cancel_at[0] < 1.0
    partial = cache.resolve() / "models--org--tiny" / "blobs" / (_sha(MODEL) + ".incomplete")
    assert partial.stat().st_size == 700_000

    snapshot = _download(fake_hub, cache)
    assert _model_requests(fake_hub)[-1].range == "bytes=700000-"
    assert (snapshot / "model.safetensors").read_bytes() == MODEL


def test_cancel_while_the_hub_does_not_answer(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.hang("/api/models/org/tiny")
    started = time.monotonic()
    with pytest.raises(Cancelled):
        _download(fake_hub, cache, should_cancel=lambda: time.monotonic() - started > 0.2)
    assert time.monotonic() - started < 1.2


def test_waits_for_a_concurrent_download_of_the_same_blob(fake_hub: FakeHub, cache: Path) -> None:
    import filelock

    lock = filelock.FileLock(str(cache / ".locks" / "models--org--tiny" / f"{_sha(MODEL)}.lock"))
    lock.acquire()  # another process (huggingface_hub uses the same lock file) is fetching the model
    lines: list[str] = []
    started = time.monotonic()
    try:
        with pytest.raises(Cancelled):
            _download(
                fake_hub, cache, log=lines.append, should_cancel=lambda: time.monotonic() - started > 0.4
            )
    finally:
        lock.release()
    assert any("waiting for another download of model.safetensors" in line for line in lines)
    assert not _model_requests(fake_hub)
    assert (_download(fake_hub, cache) / "model.safetensors").read_bytes() == MODEL


# ------------------------------------------------------------------------------------------------- retries
def test_broken_transfer_is_retried_and_resumed(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.drop_after("model.safetensors", 1_000_000)
    lines: list[str] = []
    snapshot = _download(fake_hub, cache, log=lines.append)
    gets = _model_requests(fake_hub)
    assert [r.range for r in gets] == [None, "bytes=1000000-"]
    assert (snapshot / "model.safetensors").read_bytes() == MODEL
    assert any("retry 1/5" in line for line in lines)


def test_server_ignoring_range_restarts_the_file(fake_hub: FakeHub, cache: Path) -> None:
    blobs = cache.resolve() / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / (_sha(MODEL) + ".incomplete")).write_bytes(MODEL[:123_456])
    fake_hub.ignore_range = True
    lines: list[str] = []
    events: list[hub.DownloadProgress] = []
    snapshot = _download(fake_hub, cache, log=lines.append, on_progress=events.append)
    assert [(r.range, r.status) for r in _model_requests(fake_hub)] == [("bytes=123456-", 200), (None, 200)]
    assert any(
        "ignored the resume request for model.safetensors: starting model.safetensors over" in x
        for x in lines
    )
    assert (snapshot / "model.safetensors").read_bytes() == MODEL
    assert events[-1].done == events[-1].total


def test_503_is_retried_with_exponential_backoff(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.fail("/api/models/org/tiny", status=503, times=2)
    fake_hub.fail("model.safetensors", status=503, times=2)
    lines: list[str] = []
    started = time.monotonic()
    snapshot = _download(fake_hub, cache, log=lines.append, backoff=0.1)
    assert time.monotonic() - started >= 2 * (0.1 + 0.2)
    assert (snapshot / "model.safetensors").read_bytes() == MODEL
    assert len(fake_hub.requests_for("/api/models/org/tiny")) == 3
    assert [r.status for r in _model_requests(fake_hub)] == [503, 503, 200]
    retries = [line for line in lines if "HTTP 503" in line]
    assert [("retry 1/5 in 0.1 s" in r, "retry 2/5 in 0.2 s" in r) for r in retries] == [
        (True, False),
        (False, True),
    ] * 2


def test_retries_give_up_with_a_message_naming_repo_and_file(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.fail("model.safetensors", status=500, times=5)
    with pytest.raises(hub.HubError, match=r"model\.safetensors of 'org/tiny@main' failed after 3 attempts"):
        _download(fake_hub, cache, max_retries=2)
    assert len(_model_requests(fake_hub)) == 3
    assert not (cache.resolve() / "models--org--tiny" / "snapshots").exists()


def test_unreachable_hub(fake_hub: FakeHub, cache: Path) -> None:
    snapshot = _download(fake_hub, cache)
    dead = FakeHub().start()
    dead_url = dead.url
    dead.stop()
    # Cached: the download falls back to the snapshot, like huggingface_hub does.
    assert (
        hub.download_repo("org/tiny", cache_dir=cache, endpoint=dead_url, max_retries=1, backoff=0.01)
        == snapshot
    )
    with pytest.raises(hub.HubOfflineError, match="cannot reach the hub .*'org/other'"):
        hub.download_repo("org/other", cache_dir=cache, endpoint=dead_url, max_retries=1, backoff=0.01)


# ------------------------------------------------------------------------------------------------- hub errors
def test_missing_gated_and_private_repos(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.add_repo("org/gated", {"config.json": CONFIG, "model.safetensors": MODEL[:5000]}, gated=True)
    fake_hub.add_repo("org/private", {"config.json": CONFIG}, private=True)
    fake_hub.grant("hf_reader", "org/tiny")
    fake_hub.grant("hf_gated_ok", "org/gated")

    with pytest.raises(hub.RepoNotFoundError, match="'org/missing'") as missing:
        _download(fake_hub, cache, "org/missing", token="hf_reader")
    assert not isinstance(missing.value, hub.UnauthorizedError)
    with pytest.raises(hub.RevisionNotFoundError, match="revision 'v9' does not exist in 'org/tiny'"):
        _download(fake_hub, cache, "org/tiny", revision="v9")
    # Without a token the hub answers 401 for missing and private repos alike: the error is both.
    with pytest.raises(hub.PrivateOrMissingRepoError, match="'org/missing'") as ambiguous:
        _download(fake_hub, cache, "org/missing")
    assert isinstance(ambiguous.value, hub.RepoNotFoundError) and isinstance(
        ambiguous.value, hub.UnauthorizedError
    )

    with pytest.raises(hub.GatedRepoError, match="'org/gated'.*gated.*HTTP 401"):
        _download(fake_hub, cache, "org/gated")
    with pytest.raises(hub.GatedRepoError, match="'org/gated'.*HTTP 403"):
        _download(fake_hub, cache, "org/gated", token="hf_reader")
    assert (_download(fake_hub, cache, "org/gated", token="hf_gated_ok") / "model.safetensors").exists()

    with pytest.raises(hub.UnauthorizedError, match="'org/private'.*private"):
        _download(fake_hub, cache, "org/private")
    with pytest.raises(hub.UnauthorizedError, match="'org/private'.*token was rejected"):
        _download(fake_hub, cache, "org/private", token="hf_bogus")
    # Access errors are not retried.
    assert len(fake_hub.requests_for("/api/models/org/private")) == 2
    assert len(fake_hub.requests_for("/org/gated/resolve/")) == 2 + len(fake_hub.repos["org/gated"].files)
    assert not (cache.resolve() / "models--org--private").exists()


def test_forbidden_403_is_unauthorized(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.fail("config.json", status=403, times=1)
    with pytest.raises(hub.UnauthorizedError, match="no permission to read 'org/tiny' .*config.json.*403"):
        _download(fake_hub, cache)
    assert len(fake_hub.requests_for("config.json")) == 1


# ------------------------------------------------------------------------------------------------- disk space
def test_too_little_free_space_fails_before_downloading(fake_hub: FakeHub, cache: Path) -> None:
    seen: list[Path] = []

    def free_space(path: Path) -> int:
        seen.append(path)
        return 2_000_000

    with pytest.raises(hub.DiskFullError, match=r"'org/tiny@main': it needs 4\.0 MB, only 2\.0 MB are free"):
        _download(fake_hub, cache, free_space=free_space)
    assert seen and str(seen[0]).startswith(str(cache.resolve()))
    assert not fake_hub.requests_for("/resolve/")
    assert not (cache.resolve() / "models--org--tiny" / "snapshots").exists()


def _small_disk(tmp_path: Path) -> tuple[Path, bool]:
    """A 1 MB tmpfs when we may mount one (root on Linux), else None."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return mount_point, False
    return mount_point, result.returncode == 0


def test_real_disk_full_mid_write(fake_hub: FakeHub, tmp_path: Path) -> None:
    small, mounted = _small_disk(tmp_path)
    if not mounted:
        if not Path("/dev/full").exists():
            pytest.skip("cannot mount a small tmpfs here, and there is no /dev/full to write to")
        # Fall back to /dev/full, which fails every write with ENOSPC: make the partial file point at it.
        blobs = small / "models--org--tiny" / "blobs"
        blobs.mkdir(parents=True)
        (blobs / (_sha(MODEL) + ".incomplete")).symlink_to("/dev/full")
    try:
        with pytest.raises(
            hub.DiskFullError, match="disk filled up while downloading model.safetensors of 'org/tiny"
        ):
            _download(fake_hub, small, free_space=lambda path: 10**12)
        storage = small / "models--org--tiny"
        assert not (storage / "snapshots").exists()
        assert not (storage / "blobs" / _sha(MODEL)).exists()
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=False, timeout=10)


# ------------------------------------------------------------------------------------------------- offline
def test_offline_mode_uses_the_cache_only(fake_hub: FakeHub, cache: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubOfflineError, match="'org/tiny' .* not in the local cache .* offline"):
        _download(fake_hub, cache)
    with pytest.raises(hub.HubOfflineError, match="offline"):
        hub.list_repo_files("org/tiny", endpoint=fake_hub.url)
    assert fake_hub.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    snapshot = _download(fake_hub, cache)
    n_requests = len(fake_hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lines: list[str] = []
    assert _download(fake_hub, cache, log=lines.append) == snapshot
    commit = fake_hub.repos["org/tiny"].commit
    assert hub.download_repo("org/tiny", commit, cache_dir=cache) == snapshot
    assert len(fake_hub.requests) == n_requests
    assert any("offline" in line for line in lines)
    with pytest.raises(hub.HubOfflineError, match="revision 'dev'"):
        _download(fake_hub, cache, revision="dev")


def test_offline_ignores_a_partial_snapshot_written_by_another_tool(
    fake_hub: FakeHub, cache, monkeypatch
) -> None:
    from huggingface_hub import snapshot_download

    fake_hub.patch_endpoint(monkeypatch)
    snapshot = Path(snapshot_download("org/tiny", cache_dir=cache, ignore_patterns=["*.bin"]))
    (snapshot / "model.safetensors").unlink()  # as if that tool had been interrupted
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(hub.HubOfflineError, match="not in the local cache"):
        _download(fake_hub, cache)


# ------------------------------------------------------------------------------------------------- safety
def test_pickle_only_repo_is_refused_unless_allowed(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.add_repo("org/pickled", {"config.json": CONFIG, "pytorch_model.bin": PICKLE})
    with pytest.raises(
        hub.PickleWeightsError, match="'org/pickled' only has pickle weights .*pytorch_model.bin"
    ):
        _download(fake_hub, cache, "org/pickled")
    with pytest.raises(hub.PickleWeightsError):
        hub.list_repo_files("org/pickled", endpoint=fake_hub.url)
    assert not fake_hub.requests_for("/org/pickled/resolve/")

    snapshot = _download(fake_hub, cache, "org/pickled", allow_pickle=True)
    assert (snapshot / "pytorch_model.bin").read_bytes() == PICKLE
    # Even when allowed, safetensors win where present.
    assert "pytorch_model.bin" not in {
        f.path for f in hub.list_repo_files("org/tiny", endpoint=fake_hub.url, allow_pickle=True)
    }


def test_corrupt_partial_file_is_detected_and_removed(fake_hub: FakeHub, cache: Path) -> None:
    blobs = cache.resolve() / "models--org--tiny" / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / (_sha(MODEL) + ".incomplete")
    partial.write_bytes(b"\0" * 100_000)  # not the model's first bytes
    with pytest.raises(
        hub.HubError, match="model.safetensors of 'org/tiny@main' does not match the hub's checksum"
    ):
        _download(fake_hub, cache)
    assert not partial.exists()
    assert not (blobs.parent / "snapshots").exists()
    assert (_download(fake_hub, cache) / "model.safetensors").read_bytes() == MODEL


def test_unsafe_names_are_refused(fake_hub: FakeHub, cache: Path) -> None:
    fake_hub.add_repo("org/evil", {"config.json": CONFIG, "../../escape.txt": b"x"})
    with pytest.raises(hub.HubError, match="unsafe file name '../../escape.txt' in 'org/evil@main'"):
        _download(fake_hub, cache, "org/evil")
    assert not fake_hub.requests_for("/org/evil/resolve/")
    with pytest.raises(hub.HubError, match="not a valid revision"):
        _download(fake_hub, cache, revision="../../refs")
    assert not list(cache.parent.rglob("escape.txt"))


# ------------------------------------------------------------------------------------------------- token
def test_token_from_hf_token_is_sent_but_never_logged(fake_hub: FakeHub, cache: Path, monkeypatch) -> None:
    fake_hub.add_repo(
        "org/private", {"config.json": CONFIG, "model.safetensors": MODEL[:300_000]}, private=True
    )
    fake_hub.grant(SECRET, "org/private")
    fake_hub.cdn_redirect = True  # LFS files redirect to another origin, like the hub's CDN
    fake_hub.drop_after("/cdn/", 100_000)  # a retry logs the error too
    monkeypatch.setenv("HF_TOKEN", SECRET)
    lines: list[str] = []
    snapshot = _download(fake_hub, cache, "org/private", log=lines.append)
    assert (snapshot / "model.safetensors").read_bytes() == MODEL[:300_000]

    hub_requests = fake_hub.requests_for("/org/private/") + fake_hub.requests_for("/api/models/org/private")
    assert hub_requests and all(r.authorization == f"Bearer {SECRET}" for r in hub_requests)
    cdn = fake_hub.requests_for("/cdn/")
    assert len(cdn) == 2 and all(r.authorization is None for r in cdn), "the token must not follow a redirect"
    assert cdn[1].range == "bytes=100000-"
    assert lines and not any(SECRET in line for line in lines)

    monkeypatch.setenv("HF_TOKEN", "hf_wrong_" + SECRET)
    with pytest.raises(hub.UnauthorizedError) as rejected:
        _download(fake_hub, cache, "org/other", log=lines.append)
    assert SECRET not in str(rejected.value)


def test_resolve_token_order_and_store_token(_clean_env: MemoryKeyring, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import constants

    assert hub.resolve_token() is None
    token_file = tmp_path / "hf-login-token"
    token_file.write_text("hf_from_login\n")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(token_file))
    assert hub.resolve_token() == "hf_from_login"

    assert hub.store_token("hf_from_keyring ") is True
    assert _clean_env.passwords == {("emgui", "hf_token"): "hf_from_keyring"}
    assert hub.resolve_token() == "hf_from_keyring"

    monkeypatch.setenv("HF_TOKEN", "hf_from_env")
    assert hub.resolve_token() == "hf_from_env"

    monkeypatch.delenv("HF_TOKEN")
    assert hub.store_token(None) is True and _clean_env.passwords == {}
    assert hub.store_token("") is True  # deleting twice is fine
    assert hub.resolve_token() == "hf_from_login"


def test_store_token_without_a_keyring_backend() -> None:
    from keyring.backends import fail

    keyring.set_keyring(fail.Keyring())
    assert hub.store_token("hf_x") is False
    assert hub.store_token(None) is False
    assert hub.resolve_token() is None


# ------------------------------------------------------------------------------------------------- specs
def test_parse_repo_spec() -> None:
    assert hub.parse_repo_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        None,
    )
    assert hub.parse_repo_spec(" org/name@v1.0 ") == ("org/name", "v1.0")
    assert hub.parse_repo_spec("org/name@refs/pr/1") == ("org/name", "refs/pr/1")
    assert hub.parse_repo_spec("gpt2") == ("gpt2", None)
    for bad in ("org/name@", "org/name@../x", "org//name", "a/b/c", "org/na me", "org--x/y", "../x", ""):
        with pytest.raises(hub.HubError, match="not a hub model id"):
            hub.parse_repo_spec(bad)


def test_looks_like_repo_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "mine").mkdir(parents=True)
    assert hub.looks_like_repo_id("org/name")
    assert hub.looks_like_repo_id("org/name@main")
    assert not hub.looks_like_repo_id("models/mine")  # an existing folder wins
    assert not hub.looks_like_repo_id(str(tmp_path / "models"))
    assert not hub.looks_like_repo_id("./org/name")
    assert not hub.looks_like_repo_id("gpt2")  # could be a local name: only org/name counts
    assert not hub.looks_like_repo_id("a/b/c")


def test_hub_reachable_answers_fast_and_respects_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket
    import time as _time

    from emgui.core.models import hub
    from tests.hubserver import FakeHub

    with FakeHub() as server:
        assert hub.hub_reachable(endpoint=server.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert not hub.hub_reachable(endpoint=server.url)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = _time.monotonic()
    assert not hub.hub_reachable(timeout=2, endpoint=f"http://127.0.0.1:{port}")
    assert _time.monotonic() - t0 < 3
