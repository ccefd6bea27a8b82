"""Resolving audio references: data URIs, local files, uploads, url_map and guarded downloads.

A process-wide audit hook records every outgoing connection and DNS lookup while these tests run and
blocks any that is not loopback, so no test can send a packet elsewhere, and the SSRF tests can prove a
refusal came before any connection was attempted.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from qasr.audio.sources import SourcePolicy, fetch_source, is_public_address, load_source_sync, map_url
from qasr.errors import (
    AudioTooLarge,
    DownloadFailed,
    ForbiddenSource,
    InvalidRequest,
    SourceError,
    UnsupportedSource,
    UploadNotFound,
)
from qasr.types import AudioLimits

NO_LIMITS = AudioLimits()
SERVER = SourcePolicy()
"""What a server uses: no local files, public hosts only."""
LOOPBACK = ("127.0.0.1", "::1")


# --- the network guard -----------------------------------------------------------------------------


class _NetworkGuard:
    """Records connects and lookups while active; refuses anything that could leave the machine."""

    def __init__(self) -> None:
        self.active = False
        self.connects: list[str] = []
        self.lookups: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.active:
            return
        if event == "socket.connect":
            address = args[1]
            host = str(address[0] if isinstance(address, tuple) else address)
            self.connects.append(host)
            if host not in LOOPBACK:
                raise ConnectionRefusedError(f"test guard: connection to {host} blocked")
        elif event == "socket.getaddrinfo":
            host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
            self.lookups.append(host)
            if host != "localhost" and not _is_ip_literal(host):
                raise OSError(f"test guard: DNS lookup of {host} blocked")


def _is_ip_literal(host: str) -> bool:
    """True when the resolver answers without asking DNS (inet_aton also reads `2130706433`)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            socket.inet_aton(host)
        except OSError:
            return False
    return True


_GUARD = _NetworkGuard()
sys.addaudithook(_GUARD)  # audit hooks cannot be removed; the guard is idle outside this module's tests


@pytest.fixture(autouse=True)
def network() -> Iterator[_NetworkGuard]:
    _GUARD.connects, _GUARD.lookups, _GUARD.active = [], [], True
    try:
        yield _GUARD
    finally:
        _GUARD.active = False


# --- a local HTTP server -----------------------------------------------------------------------------

Route = Callable[[BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.routes: dict[str, Route] = {}
        self.seen: list[tuple[str, str | None]] = []
        """(path, Host header) of every request received."""
        self.release = threading.Event()
        """Set at teardown so that stalled handlers return."""
        self.done = threading.Event()
        self.written = 0

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Host")))
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


def body(data: bytes, content_length: bool = True) -> Route:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "audio/wav")
        if content_length:
            handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return handle


def redirect(location: str, status: int = 302) -> Route:
    def handle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return handle


def stall(handler: BaseHTTPRequestHandler) -> None:
    assert isinstance(handler.server, _Server)
    handler.server.release.wait(timeout=10)


def endless(total: int) -> Route:
    """A body without Content-Length, `total` bytes long, written until the client hangs up."""

    def handle(handler: BaseHTTPRequestHandler) -> None:
        assert isinstance(handler.server, _Server)
        handler.send_response(200)
        handler.end_headers()
        block = bytes(64 * 1024)
        try:
            while handler.server.written < total:
                handler.wfile.write(block)
                handler.server.written += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            handler.close_connection = True
            handler.server.done.set()

    return handle


def fetch(
    ref: str | bytes | Path, policy: SourcePolicy = SERVER, limits: AudioLimits = NO_LIMITS
) -> bytes | Path:
    return asyncio.run(fetch_source(ref, policy, limits))


def allow_loopback(**changes: Any) -> SourcePolicy:
    return SourcePolicy(allow_url_hosts=("127.0.0.1", "localhost"), **changes)


# --- bytes and data URIs -------------------------------------------------------------------------------


def test_bytes_pass_through_size_checked() -> None:
    assert fetch(b"RIFF1234") == b"RIFF1234"
    with pytest.raises(AudioTooLarge, match=r"Audio is 2 KB; qasr accepts at most 1 KB\."):
        fetch(bytes(2048), limits=AudioLimits(max_bytes=1024))


def test_data_uri_is_decoded() -> None:
    data = bytes(range(256)) * 3
    uri = "data:audio/wav;base64," + base64.b64encode(data).decode()

    assert fetch(uri) == data


def test_data_uri_accepts_line_wrapped_base64_and_missing_padding() -> None:
    data = b"some audio bytes!"
    encoded = base64.encodebytes(data).decode().rstrip("=\n")  # MIME style, padding dropped

    assert fetch("data:audio/mpeg;base64," + encoded) == data


def test_data_uri_over_the_limit_is_refused_before_decoding() -> None:
    # Not even valid base64: refusing it as too large proves the size came first.
    uri = "data:audio/wav;base64," + "!" * 20_000

    with pytest.raises(AudioTooLarge, match=r"Audio is 14.6 KB; qasr accepts at most 10 KB\."):
        fetch(uri, limits=AudioLimits(max_bytes=10 * 1024))


def test_data_uri_of_exactly_the_limit_passes() -> None:
    data = bytes(1000)

    assert (
        fetch("data:;base64," + base64.b64encode(data).decode(), limits=AudioLimits(max_bytes=1000)) == data
    )


@pytest.mark.parametrize("payload", ["not base64 at all!", "QUJD*RA==", "A", "ünïcödé"])
def test_bad_base64_is_an_invalid_request(payload: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        fetch("data:audio/wav;base64," + payload)

    assert type(raised.value) is InvalidRequest
    assert raised.value.message.startswith("The data URI is not valid base64")


@pytest.mark.parametrize("uri", ["data:audio/wav,RIFF....", "data:audio/wav;base64"])
def test_data_uri_that_is_not_base64_form_is_refused(uri: str) -> None:
    with pytest.raises(
        InvalidRequest, match=r"only base64 data URIs are accepted, as data:<mime>;base64,<data>"
    ):
        fetch(uri)


# --- local files ------------------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(allowed directory holding a.wav, outside directory holding secret.wav)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    (allowed / "a.wav").write_bytes(b"inside")
    (outside / "secret.wav").write_bytes(b"secret")
    return allowed, outside


def test_files_inside_allowed_dirs_are_read_in_every_form(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    (allowed / "my song.wav").write_bytes(b"spaced")
    policy = SourcePolicy(allow_local_dirs=(allowed,))
    expected = (allowed / "my song.wav").resolve()

    assert fetch(allowed / "my song.wav", policy) == expected
    assert fetch(str(allowed / "my song.wav"), policy) == expected
    assert fetch((allowed / "my song.wav").as_uri(), policy) == expected  # file:///.../my%20song.wav
    assert fetch(f"file://localhost{allowed}/my song.wav", policy) == expected


def test_server_policy_reads_no_local_file(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs

    with pytest.raises(ForbiddenSource) as raised:
        fetch(allowed / "a.wav")

    assert raised.value.message == (
        f"This server does not read the local file {allowed / 'a.wav'}; send the audio as an upload, "
        "an http(s) URL or a base64 data URI."
    )


@pytest.mark.parametrize("ref", ["file:///etc/passwd", "/etc/passwd", "file://localhost/etc/passwd"])
def test_system_files_are_forbidden(dirs: tuple[Path, Path], ref: str) -> None:
    with pytest.raises(ForbiddenSource, match="does not read the local file"):
        fetch(ref, SourcePolicy(allow_local_dirs=(dirs[0],)))


def test_dot_dot_cannot_leave_an_allowed_dir(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    policy = SourcePolicy(allow_local_dirs=(allowed,))

    with pytest.raises(ForbiddenSource, match="does not read the local file"):
        fetch(f"{allowed}/../outside/secret.wav", policy)
    with pytest.raises(ForbiddenSource, match="does not read the local file"):
        fetch(f"file://{allowed}/%2E%2E/outside/secret.wav", policy)


def test_symlinks_cannot_leave_an_allowed_dir(dirs: tuple[Path, Path]) -> None:
    allowed, outside = dirs
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    (allowed / "linked-dir").symlink_to(outside)
    policy = SourcePolicy(allow_local_dirs=(allowed,))

    with pytest.raises(ForbiddenSource, match="does not read the local file"):
        fetch(allowed / "link.wav", policy)
    with pytest.raises(ForbiddenSource, match="does not read the local file"):
        fetch(allowed / "linked-dir" / "secret.wav", policy)


def test_symlinks_within_an_allowed_dir_and_a_symlinked_allowed_dir_work(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    allowed, _ = dirs
    (allowed / "alias.wav").symlink_to(allowed / "a.wav")
    (tmp_path / "allowed-link").symlink_to(allowed)

    assert (
        fetch(allowed / "alias.wav", SourcePolicy(allow_local_dirs=(allowed,)))
        == (allowed / "a.wav").resolve()
    )
    via_link = SourcePolicy(allow_local_dirs=(tmp_path / "allowed-link",))
    assert fetch(tmp_path / "allowed-link" / "a.wav", via_link) == (allowed / "a.wav").resolve()


def test_missing_file_in_an_allowed_dir_is_not_found(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs

    with pytest.raises(SourceError) as raised:
        fetch(str(allowed / "missing.wav"), SourcePolicy(allow_local_dirs=(allowed,)))

    assert type(raised.value) is SourceError
    assert raised.value.message == f"Audio file not found: {allowed / 'missing.wav'}."


def test_missing_file_outside_is_forbidden_so_existence_does_not_leak(dirs: tuple[Path, Path]) -> None:
    allowed, outside = dirs

    with pytest.raises(ForbiddenSource):
        fetch(outside / "missing.wav", SourcePolicy(allow_local_dirs=(allowed,)))


def test_a_directory_is_not_an_audio_file(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs

    with pytest.raises(SourceError, match="Audio file not found"):
        fetch(allowed, SourcePolicy(allow_local_dirs=(allowed,)))


def test_cli_policy_reads_any_file_size_checked(dirs: tuple[Path, Path]) -> None:
    _, outside = dirs
    cli = SourcePolicy(allow_any_local=True)

    assert load_source_sync(str(outside / "secret.wav"), cli, NO_LIMITS) == (outside / "secret.wav").resolve()
    with pytest.raises(AudioTooLarge, match=r"Audio is 6 bytes; qasr accepts at most 5 bytes\."):
        fetch(outside / "secret.wav", cli, AudioLimits(max_bytes=5))


# --- uploads and schemes ----------------------------------------------------------------------------------


def test_oss_keys_resolve_through_the_upload_store(dirs: tuple[Path, Path]) -> None:
    allowed, _ = dirs
    keys: list[str] = []

    def resolve(key: str) -> Path:
        keys.append(key)
        if key.endswith("gone.wav"):
            raise UploadNotFound("The uploaded file has expired; upload it again.")
        return allowed / "a.wav"

    policy = SourcePolicy(resolve_upload=resolve)

    assert fetch("oss://dashscope-instant/abc/a.wav", policy) == (allowed / "a.wav").resolve()
    assert keys == ["dashscope-instant/abc/a.wav"]
    with pytest.raises(UploadNotFound, match="has expired"):
        fetch("oss://dashscope-instant/abc/gone.wav", policy)


def test_oss_without_an_upload_store_is_unsupported() -> None:
    with pytest.raises(UnsupportedSource, match="oss:// references are not accepted here"):
        fetch("oss://dashscope-instant/abc/a.wav")


@pytest.mark.parametrize(
    "ref", ["ftp://example.com/a.wav", "gopher://example.com/", "s3://bucket/a.wav", "javascript:alert(1)"]
)
def test_other_schemes_are_unsupported(ref: str, network: _NetworkGuard) -> None:
    with pytest.raises(UnsupportedSource) as raised:
        fetch(ref)

    scheme = ref.split(":")[0]
    assert raised.value.message.startswith(f"Audio references starting with '{scheme}:' are not supported")
    assert "an http(s) URL, a data:<mime>;base64,<data> URI, an oss:// key" in raised.value.message
    assert network.lookups == []


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("", "The audio reference is empty"),
        ("  ", "The audio reference is empty"),
        ("http://", "has no host"),
    ],
)
def test_malformed_references_are_invalid_requests(ref: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        fetch(ref)


# --- address checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
        ("::ffff:8.8.8.8", True),
        ("127.0.0.1", False),
        ("::1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),  # cloud metadata
        ("fe80::1", False),
        ("fc00::1", False),
        ("fd00:ec2::254", False),
        ("224.0.0.1", False),
        ("ff02::1", False),
        ("0.0.0.0", False),
        ("::", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("::ffff:10.0.0.1", False),  # IPv4-mapped
        ("::ffff:127.0.0.1", False),
        ("2002:a00:1::", False),  # 6to4 wrapping 10.0.0.1
        ("64:ff9b::a00:1", False),  # NAT64 wrapping 10.0.0.1
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.1/x.wav",
        "http://192.168.1.10:8080/x.wav",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:10.0.0.1]/x.wav",
        "http://[fd00::1]/x.wav",
        "https://0.0.0.0/x.wav",
        "http://2130706433/x.wav",  # 127.0.0.1 written as one number
    ],
)
def test_private_addresses_are_refused_before_connecting(url: str, network: _NetworkGuard) -> None:
    with pytest.raises(ForbiddenSource) as raised:
        fetch(url)

    assert "is on a private, loopback or link-local network" in raised.value.message
    assert network.connects == []


def test_loopback_is_refused_by_default(server: _Server, network: _NetworkGuard) -> None:
    server.routes["/a.wav"] = body(b"audio")

    for url in (server.url("/a.wav"), f"http://localhost:{server.port}/a.wav"):
        with pytest.raises(ForbiddenSource, match="private, loopback or link-local"):
            fetch(url)

    assert network.connects == []
    assert server.seen == []


# --- downloads ---------------------------------------------------------------------------------------------


def test_download_from_an_allowed_host(server: _Server) -> None:
    server.routes["/a.wav"] = body(b"RIFF-audio")

    assert fetch(server.url("/a.wav"), allow_loopback()) == b"RIFF-audio"


def test_connection_is_pinned_to_the_checked_address(server: _Server, network: _NetworkGuard) -> None:
    server.routes["/a.wav"] = body(b"RIFF-audio")

    assert fetch(f"http://localhost:{server.port}/a.wav", allow_loopback()) == b"RIFF-audio"

    # Connected to an address the check saw (::1 may be tried first and refused), by IP, with the
    # host name kept in the Host header.
    assert set(network.connects) <= set(LOOPBACK)
    assert [host for host in network.lookups if not _is_ip_literal(host)] == ["localhost"]
    assert server.seen == [("/a.wav", f"localhost:{server.port}")]


def test_redirects_are_followed(server: _Server) -> None:
    server.routes["/start"] = redirect("/middle", status=301)
    server.routes["/middle"] = redirect(server.url("/a.wav"), status=307)
    server.routes["/a.wav"] = body(b"RIFF-audio")

    assert fetch(server.url("/start"), allow_loopback()) == b"RIFF-audio"
    assert [path for path, _ in server.seen] == ["/start", "/middle", "/a.wav"]


def test_redirect_to_a_private_host_is_refused(server: _Server, network: _NetworkGuard) -> None:
    server.routes["/go"] = redirect("http://10.0.0.1/x.wav")

    with pytest.raises(
        ForbiddenSource, match=r"host 10\.0\.0\.1 is on a private, loopback or link-local network"
    ):
        fetch(server.url("/go"), allow_loopback())

    assert network.connects == ["127.0.0.1"]


def test_redirect_to_another_scheme_is_refused(server: _Server) -> None:
    server.routes["/go"] = redirect("file:///etc/passwd")

    with pytest.raises(
        ForbiddenSource, match="Only http and https audio URLs are followed, not a 'file:' URL"
    ):
        fetch(server.url("/go"), allow_loopback())


def test_redirect_loops_stop_at_max_redirects(server: _Server) -> None:
    server.routes["/loop"] = redirect("/loop")

    with pytest.raises(DownloadFailed, match="redirected more than 3 times"):
        fetch(server.url("/loop"), allow_loopback(max_redirects=3))

    assert len(server.seen) == 4


def test_http_error_status_is_download_failed(server: _Server) -> None:
    with pytest.raises(DownloadFailed) as raised:
        fetch(server.url("/missing.wav"), allow_loopback())

    assert raised.value.status == 404
    assert raised.value.message.startswith(
        "Downloading the audio failed: the server answered HTTP 404 Not Found."
    )


def test_announced_oversize_body_is_refused_from_content_length(server: _Server) -> None:
    server.routes["/big.wav"] = body(bytes(50_000))

    # The exact size can only come from the header: the body was never read.
    with pytest.raises(AudioTooLarge, match=r"Audio is 48.8 KB; qasr accepts at most 10 KB\."):
        fetch(server.url("/big.wav"), allow_loopback(), AudioLimits(max_bytes=10 * 1024))


def test_unannounced_oversize_body_is_cut_off_while_streaming(server: _Server) -> None:
    total = 64 * 1024 * 1024
    server.routes["/endless.wav"] = endless(total)

    with pytest.raises(AudioTooLarge, match=r"Audio is larger than 64 KB; qasr accepts at most 64 KB\."):
        fetch(server.url("/endless.wav"), allow_loopback(), AudioLimits(max_bytes=64 * 1024))

    assert server.done.wait(timeout=10)
    assert server.written < total // 4  # the client hung up long before the end


def test_body_within_the_limit_without_content_length(server: _Server) -> None:
    server.routes["/a.wav"] = body(b"x" * 1000, content_length=False)

    assert fetch(server.url("/a.wav"), allow_loopback(), AudioLimits(max_bytes=1000)) == b"x" * 1000


def test_stalled_server_times_out(server: _Server) -> None:
    server.routes["/slow.wav"] = stall

    with pytest.raises(DownloadFailed) as raised:
        fetch(server.url("/slow.wav"), allow_loopback(timeout_s=0.5))

    assert raised.value.status is None
    assert raised.value.message == "Downloading the audio from 127.0.0.1 timed out after 0.5 seconds."


def test_refused_connection_is_download_failed() -> None:
    closed = _Server()
    port = closed.port
    closed.server_close()

    with pytest.raises(DownloadFailed, match=r"Could not connect to 127\.0\.0\.1 to download the audio"):
        fetch(f"http://127.0.0.1:{port}/a.wav", allow_loopback())


# --- url_map -------------------------------------------------------------------------------------------------


def test_url_map_to_a_directory_reads_the_file_without_any_network(
    dirs: tuple[Path, Path], network: _NetworkGuard
) -> None:
    allowed, _ = dirs
    (allowed / "sub").mkdir()
    (allowed / "sub" / "b c.wav").write_bytes(b"mirrored")
    policy = SourcePolicy(url_map={"https://mirror.example/audio/": str(allowed)})

    assert fetch("https://mirror.example/audio/sub/b%20c.wav?sig=1#t", policy) == (
        allowed / "sub" / "b c.wav"
    )
    assert network.lookups == []
    assert network.connects == []


@pytest.mark.parametrize(
    "rest", ["../outside/secret.wav", "%2e%2e/outside/secret.wav", "sub/../../outside/secret.wav", "", "/"]
)
def test_url_map_cannot_leave_its_directory(dirs: tuple[Path, Path], rest: str) -> None:
    allowed, _ = dirs
    policy = SourcePolicy(url_map={"https://mirror.example/": str(allowed)})

    with pytest.raises(ForbiddenSource, match="points outside the directory it is mirrored to"):
        fetch("https://mirror.example/" + rest, policy)


def test_url_map_missing_file_is_not_found(dirs: tuple[Path, Path]) -> None:
    policy = SourcePolicy(url_map={"https://mirror.example/": str(dirs[0])})

    with pytest.raises(SourceError, match=r"Audio file not found: https://mirror\.example/nope\.wav\."):
        fetch("https://mirror.example/nope.wav", policy)


def test_url_map_longest_prefix_wins(tmp_path: Path) -> None:
    url_map = {"https://m.example/": str(tmp_path / "a"), "https://m.example/special/": str(tmp_path / "b")}

    assert map_url("https://m.example/special/x.wav", url_map) == tmp_path.resolve() / "b" / "x.wav"
    assert map_url("https://m.example/other/x.wav", url_map) == tmp_path.resolve() / "a" / "other" / "x.wav"
    assert map_url("https://elsewhere.example/x.wav", url_map) == "https://elsewhere.example/x.wav"


def test_url_map_to_another_url_downloads_from_it(server: _Server) -> None:
    server.routes["/mirror/a.wav"] = body(b"RIFF-mirrored")
    url_map = {"https://cdn.example/": server.url("/mirror/")}

    assert fetch("https://cdn.example/a.wav", allow_loopback(url_map=url_map)) == b"RIFF-mirrored"
    # The mapped URL gets the same checks as any other: a loopback mirror needs allow_url_hosts.
    with pytest.raises(ForbiddenSource, match="private, loopback or link-local"):
        fetch("https://cdn.example/a.wav", SourcePolicy(url_map=url_map))
