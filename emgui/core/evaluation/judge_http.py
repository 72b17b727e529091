"""One HTTP request to a judge endpoint, with the limits urllib lacks.

`urllib.request.urlopen` follows redirects with the caller's headers (the API key included), its `timeout`
bounds each socket operation rather than the request (a server dripping a byte a second holds it for ever),
and `read()` takes whatever size the server sends. `request_json` instead:

- follows a redirect only within the origin it was given (scheme, host and port); a redirect to another
  origin is refused (`Refused`), so the key never leaves the host the user named and no other host's reply
  is ever read as scores;
- gives every request a total deadline: a watchdog thread shuts the socket down when it passes (or when the
  caller cancels), whatever the server trickles;
- reads the reply in chunks up to `max_bytes` and stops there, so memory stays bounded;
- honours the usual proxy variables (`https_proxy`, `http_proxy`, `no_proxy`) except for loopback hosts.

Errors worth retrying (time-outs, broken connections, incomplete replies) raise `Transient`; HTTP error
statuses come back as a `Reply` for the caller to judge.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urljoin, urlsplit

REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5


class Transient(Exception):
    """A failure that another attempt may not have (time-out, connection reset, incomplete reply)."""


class Refused(Exception):
    """A reply the client will not use: a redirect to another origin, or one over the size cap."""


class Aborted(Exception):
    """The caller cancelled while the request was in flight."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    url: str

    def json(self) -> object:
        return json.loads(self.body.decode("utf-8", "replace"))

    def text(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def request_json(
    url: str,
    body: dict | None,
    headers: dict[str, str],
    *,
    deadline: float,
    max_bytes: int,
    should_abort: Callable[[], bool] | None = None,
) -> Reply:
    """POST `body` as JSON (GET when None) to `url` and read the reply, all before `deadline`
    (a `time.monotonic()` value). Same-origin redirects are followed, others refused."""
    payload = None if body is None else json.dumps(body).encode("utf-8")
    start = origin(url)
    for _ in range(MAX_REDIRECTS + 1):
        reply = _once(
            url, payload, headers, deadline=deadline, max_bytes=max_bytes, should_abort=should_abort
        )
        if reply.status not in REDIRECTS:
            return reply
        location = reply.headers.get("location", "")
        target = urljoin(url, location)
        if not location or origin(target) != start:
            raise Refused(
                f"it redirected (HTTP {reply.status}) to {target or 'nowhere'}, another origin; emgui does not "
                "follow a judge endpoint elsewhere (the API key would go with it): set the base URL to where "
                "the API is"
            )
        url = target  # same origin: the same request again (an API moved a path, added a slash)
    raise Refused(f"more than {MAX_REDIRECTS} redirects")


def _once(
    url: str,
    payload: bytes | None,
    headers: dict[str, str],
    *,
    deadline: float,
    max_bytes: int,
    should_abort: Callable[[], bool] | None,
) -> Reply:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Transient("no time left before the deadline")
    conn, path, extra = _connection(url, remaining)
    done = threading.Event()
    why: list[str] = []

    def watch() -> None:
        # Shut the socket when the deadline passes or the caller cancels: the blocked read then returns.
        while not done.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                why.append("deadline")
            elif should_abort is not None and should_abort():
                why.append("aborted")
            else:
                continue
            sock = conn.sock
            if sock is not None:
                try:
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the plain socket's, also under TLS
                except OSError:
                    pass
            return

    watchdog = threading.Thread(target=watch, name="judge-http-deadline", daemon=True)
    watchdog.start()
    try:
        method = "GET" if payload is None else "POST"
        all_headers = {"Accept": "application/json", **extra, **headers}
        if payload is not None:
            all_headers.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=payload, headers=all_headers)
        response = conn.getresponse()
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > max_bytes:
            raise Refused(f"its reply is {int(length):,} bytes, over the {max_bytes:,}-byte limit")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > max_bytes:
                raise Refused(f"its reply is over the {max_bytes:,}-byte limit")
            chunks.append(chunk)
        if why:  # the watchdog shut the socket: the read ended early without an error
            raise _interrupted(why[0])
        if length and length.strip().isdigit() and size < int(length):
            # http.client's read(amt) returns b"" at a premature end instead of raising IncompleteRead
            raise Transient(f"incomplete reply ({size} of {int(length)} bytes)")
        reply_headers = {k.lower(): v for k, v in response.getheaders()}
        return Reply(response.status, reply_headers, b"".join(chunks), url)
    except (Refused, Transient, Aborted):
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if why:
            raise _interrupted(why[0]) from None
        if isinstance(exc, TimeoutError | socket.timeout) or "timed out" in str(exc):
            raise Transient("timed out") from None
        if isinstance(exc, http.client.IncompleteRead):
            raise Transient(f"incomplete reply ({len(exc.partial)} bytes of a chunk)") from None
        raise Transient(_describe(exc)) from None
    finally:
        done.set()
        conn.close()


def _interrupted(why: str) -> Exception:
    return Aborted() if why == "aborted" else Transient("timed out")


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason) or type(reason).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str, dict[str, str]]:
    """A connection for `url` (through the environment's proxy unless the host is loopback or exempt),
    the request target to send, and headers the proxy needs."""
    parts = urlsplit(url)
    scheme, host, port = origin(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    proxy = _proxy_for(scheme, host)
    extra: dict[str, str] = {}
    if proxy is None:
        if scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(host, port, timeout=timeout)
        return conn, path, extra
    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    auth = {}
    if p.username:
        token = base64.b64encode(f"{unquote(p.username)}:{unquote(p.password or '')}".encode()).decode()
        auth = {"Proxy-Authorization": f"Basic {token}"}
    proxy_host, proxy_port = p.hostname or "", p.port or 80
    if scheme == "https":
        # TLS to the endpoint inside a CONNECT tunnel: the proxy sees neither the key nor the reply.
        tunnel = http.client.HTTPSConnection(
            proxy_host, proxy_port, timeout=timeout, context=ssl.create_default_context()
        )
        tunnel.set_tunnel(host, port, headers=auth)
        return tunnel, path, extra
    extra.update(auth)
    return (
        http.client.HTTPConnection(proxy_host, proxy_port, timeout=timeout),
        f"http://{host}:{port}{path}",
        extra,
    )


def _proxy_for(scheme: str, host: str) -> str | None:
    if is_loopback(host):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme)
    if not proxy:
        return None
    try:
        if urllib.request.proxy_bypass(host):
            return None
    except Exception:  # a malformed no_proxy: use the proxy
        pass
    return proxy
