"""Resolve an audio reference (bytes, path, `file://`, `data:`, `oss://`, `http(s)://`) to bytes or a
local file, safely: server-side files only inside allowed directories, downloads only from public hosts.

The forms a DashScope client sends are listed in docs/spec/dashscope-protocol.md §2.3.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import httpx

from qasr.audio.decode import check_size, format_bytes, format_duration
from qasr.errors import (
    AudioTooLarge,
    DownloadFailed,
    ForbiddenSource,
    InvalidRequest,
    SourceError,
    UnsupportedSource,
    format_value,
)
from qasr.types import AudioLimits

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ACCEPTED_FORMS = (
    "an http(s) URL, a data:<mime>;base64,<data> URI, an oss:// key from the upload flow, "
    "or a file:// path the server allows"
)

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class SourcePolicy:
    """Which references this process may read. The defaults are the safe ones a server uses."""

    allow_local_dirs: tuple[Path, ...] = ()
    """Directories whose files (after resolving symlinks and `..`) may be named by path or `file://`."""
    allow_any_local: bool = False
    """Read any local file (the CLI sets this; a server never should)."""
    allow_url_hosts: tuple[str, ...] = ()
    """Hosts downloaded from even though they resolve to private, loopback or link-local addresses:
    `host:port` allows that port only (prefer it), a bare `host` (or `[v6]`) every port."""
    url_map: Mapping[str, str] = field(default_factory=dict)
    """URL prefix -> local directory or other URL prefix (mirrors); the longest matching prefix wins.
    A mapped URL is still checked like any other: list a private mirror's host in `allow_url_hosts`."""
    timeout_s: float = 30.0
    """Limit for a whole download, redirects included."""
    resolve_upload: Callable[[str], Path] | None = None
    """Turns an `oss://` key into the uploaded file; None: `oss://` is not accepted."""
    max_redirects: int = 5
    """Most redirects followed for one download."""


async def fetch_source(ref: str | bytes | Path, policy: SourcePolicy, limits: AudioLimits) -> bytes | Path:
    """Resolve an audio reference to its bytes (data URIs, downloads) or a checked local file path.

    Sizes are checked against `limits.max_bytes` before anything large is read or decoded. Raises
    `ForbiddenSource`, `UnsupportedSource`, `SourceError`, `DownloadFailed`, `AudioTooLarge` or
    `InvalidRequest` (a malformed data URI or URL).
    """
    if isinstance(ref, bytes):
        check_size(len(ref), limits)
        return ref
    if isinstance(ref, Path):
        return _local_file(ref, policy, limits, shown=str(ref))
    return await _fetch_reference(ref.strip(), policy, limits)


def load_source_sync(ref: str | bytes | Path, policy: SourcePolicy, limits: AudioLimits) -> bytes | Path:
    """`fetch_source` for synchronous callers (the CLI); never call it from a running event loop."""
    return asyncio.run(fetch_source(ref, policy, limits))


async def _fetch_reference(ref: str, policy: SourcePolicy, limits: AudioLimits) -> bytes | Path:
    if not ref:
        raise InvalidRequest(f"The audio reference is empty; send {ACCEPTED_FORMS}.")
    scheme = _scheme(ref)
    if scheme == "":
        return _local_file(Path(ref), policy, limits, shown=ref)
    if scheme == "data":
        if len(ref) <= _DECODE_ON_LOOP_CHARS:
            return _data_uri(ref, limits)
        return await asyncio.to_thread(_data_uri, ref, limits)  # megabytes of base64: off the loop
    if scheme == "file":
        return _local_file(_file_uri_path(ref), policy, limits, shown=ref)
    if scheme == "oss":
        return _upload(ref, policy, limits)
    if scheme in ("http", "https"):
        target = map_url(ref, policy.url_map)
        if isinstance(target, Path):
            return _existing_file(target, limits, shown=ref)
        return await download(target, policy, limits)
    raise UnsupportedSource(
        f"Audio references starting with '{format_value(scheme)}:' are not supported; send {ACCEPTED_FORMS}."
    )


def _scheme(ref: str) -> str:
    """The lower-case URI scheme, or "" for a bare path (a Windows drive letter is not a scheme)."""
    match = _SCHEME.match(ref)
    if match is None or len(match.group(1)) == 1:
        return ""
    return match.group(1).lower()


# --- data: URIs ------------------------------------------------------------------------------------


_DECODE_ON_LOOP_CHARS = 64 * 1024
"""Data URIs up to this size are decoded on the event loop; larger ones in a thread (issue 13)."""


def _data_uri(ref: str, limits: AudioLimits) -> bytes:
    header, comma, payload = ref[len("data:") :].partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise InvalidRequest(
            "The data URI is malformed: only base64 data URIs are accepted, as data:<mime>;base64,<data>."
        )
    # Refuse before decoding: base64 carries 3 bytes in every 4 characters (padding excluded).
    check_size(len(payload.rstrip("=")) * 3 // 4, limits)
    compact = "".join(payload.split())  # line-wrapped base64 (MIME style) is common
    try:
        data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            "The data URI is not valid base64; encode the file's bytes with standard base64 "
            "(A-Z, a-z, 0-9, +, /) after data:<mime>;base64,."
        ) from None
    check_size(len(data), limits)
    return data


# --- local files -----------------------------------------------------------------------------------


def _file_uri_path(ref: str) -> Path:
    # As the DashScope SDK reads file URIs (spec §3.1): netloc + path, so file://D:/x.mp3 -> D:/x.mp3.
    parts = urlsplit(ref)
    netloc = "" if parts.netloc.lower() == "localhost" else parts.netloc
    return Path(unquote(netloc + parts.path))


def _local_file(path: Path, policy: SourcePolicy, limits: AudioLimits, shown: str) -> Path:
    """A path named by the caller: allowed only inside the policy's directories (or anywhere for the CLI)."""
    real = _resolve_path(path, shown)
    # The permission check comes before any existence check, so a refused caller learns nothing about
    # which server files exist.
    if not policy.allow_any_local and not any(_is_inside(real, d) for d in policy.allow_local_dirs):
        raise ForbiddenSource(
            f"This server does not read the local file {format_value(shown)}; send the audio as an "
            "upload, an http(s) URL or a base64 data URI."
        )
    return _existing_file(real, limits, shown)


def _existing_file(path: Path, limits: AudioLimits, shown: str) -> Path:
    # The real path is returned (symlinks resolved) so that the file decoded is the file checked.
    real = _resolve_path(path, shown)
    if not real.is_file():
        raise SourceError(f"Audio file not found: {format_value(shown)}.")
    check_size(real.stat().st_size, limits)
    return real


def _resolve_path(path: Path, shown: str) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loops, NUL bytes, no home directory
        raise SourceError(f"The audio path {format_value(shown)} cannot be resolved to a file.") from None


def _is_inside(path: Path, directory: Path) -> bool:
    root = directory.expanduser().resolve()
    return path == root or path.is_relative_to(root)


def _upload(ref: str, policy: SourcePolicy, limits: AudioLimits) -> Path:
    if policy.resolve_upload is None:
        raise UnsupportedSource(f"oss:// references are not accepted here; send {ACCEPTED_FORMS}.")
    key = ref.split(":", 1)[1].removeprefix("//")
    return _existing_file(policy.resolve_upload(key), limits, shown=ref)


# --- url_map ---------------------------------------------------------------------------------------


def map_url(url: str, url_map: Mapping[str, str]) -> str | Path:
    """Apply the longest matching prefix of `url_map`: another URL, or a file inside a mapped directory.

    Returns `url` unchanged when no prefix matches. The rest of the URL can never leave a mapped
    directory (`..`, encoded or not, raises `ForbiddenSource`).
    """
    prefix = max((p for p in url_map if url.startswith(p)), key=len, default=None)
    if prefix is None:
        return url
    target, rest = url_map[prefix], url[len(prefix) :]
    scheme = _scheme(target)
    if scheme in ("http", "https"):
        return target + rest
    directory = _file_uri_path(target) if scheme == "file" else Path(target)
    return _mapped_file(directory, rest, url)


def _mapped_file(directory: Path, rest: str, url: str) -> Path:
    relative = unquote(rest.split("#", 1)[0].split("?", 1)[0]).lstrip("/")
    root = _resolve_path(directory, url)
    path = _resolve_path(root / relative, url)
    if path == root or not path.is_relative_to(root):
        raise ForbiddenSource(
            f"The audio URL {format_value(url)} points outside the directory it is mirrored to."
        )
    return path


# --- downloads -------------------------------------------------------------------------------------


_Body = TypeVar("_Body")


@dataclass(frozen=True)
class _Hop:
    """One URL to fetch, with the addresses its host resolved to and that passed the checks."""

    url: httpx.URL
    addresses: tuple[IPAddress, ...]


async def download(url: str, policy: SourcePolicy, limits: AudioLimits) -> bytes:
    """Download an http(s) URL: every hop's host is resolved and checked before connecting, redirects are
    followed by hand (at most `policy.max_redirects`), the body is capped at `limits.max_bytes` while it
    streams in, and the whole download must finish within `policy.timeout_s`.
    """
    return await download_with(url, policy, lambda response: _read_body(response, limits))


async def download_with(
    url: str, policy: SourcePolicy, read: Callable[[httpx.Response], Awaitable[_Body]]
) -> _Body:
    """`download`, with the final response's body handled by `read` (which enforces the size limit):
    into memory (`download`) or into a file (`qasr.jobs.fetch`)."""
    start = _parse_url(url)
    # Messages name the host only: a URL's path and query can carry signed tokens.
    host = format_value(start.host)
    try:
        return await asyncio.wait_for(_download(start, policy, read), policy.timeout_s)
    except (asyncio.TimeoutError, httpx.TimeoutException):
        raise DownloadFailed(
            f"Downloading the audio from {host} timed out after {format_duration(policy.timeout_s)}."
        ) from None
    except httpx.HTTPError:
        raise DownloadFailed(
            f"Downloading the audio from {host} failed: the connection was refused or broken."
        ) from None


async def _download(
    start: httpx.URL, policy: SourcePolicy, read: Callable[[httpx.Response], Awaitable[_Body]]
) -> _Body:
    # trust_env=False: no proxy from the environment, so the connection goes to the checked address.
    hooks = {"response": [_refuse_other_schemes]}
    async with httpx.AsyncClient(
        follow_redirects=False, trust_env=False, timeout=policy.timeout_s, event_hooks=hooks
    ) as client:
        current = start
        for _ in range(policy.max_redirects + 1):
            hop = await _checked_hop(current, policy)
            response = await _send(client, hop)
            try:
                location = _redirect_location(response)
                if location is None:
                    return await read(response)
            finally:
                await response.aclose()
            current = _join(current, location)
    raise DownloadFailed(f"The audio URL redirected more than {policy.max_redirects} times.")


def _join(url: httpx.URL, location: str) -> httpx.URL:
    try:
        return url.join(location)
    except httpx.InvalidURL:
        raise DownloadFailed(f"{format_value(url.host)} redirected the download to an invalid URL.") from None


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        raise InvalidRequest("The audio URL is not a valid URL.") from None
    if not parsed.host:
        raise InvalidRequest("The audio URL has no host.")
    return parsed


async def _checked_hop(url: httpx.URL, policy: SourcePolicy) -> _Hop:
    """Check the scheme and every address the host resolves to, before any connection is made."""
    if url.scheme not in ("http", "https"):
        raise _other_scheme(url.scheme)
    host = url.raw_host.decode("ascii")
    addresses = await _resolve(host, url.port or (443 if url.scheme == "https" else 80))
    port = url.port or (443 if url.scheme == "https" else 80)
    names = {_normal_host(host), _normal_host(url.host)}
    trusted = any(
        allowed_host in names and allowed_port in (None, port)
        for allowed_host, allowed_port in map(_host_and_port, policy.allow_url_hosts)
    )
    if not trusted and not all(is_public_address(a) for a in addresses):
        raise ForbiddenSource(
            f"The audio URL's host {format_value(url.host)} is on a private, loopback or link-local "
            "network; qasr downloads only from public hosts (an administrator can allow a host with "
            "allow_url_hosts)."
        )
    return _Hop(url=url, addresses=addresses)


async def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise DownloadFailed(f"The audio URL's host {format_value(host)} could not be resolved.") from None
    addresses = dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos)
    if not addresses:
        raise DownloadFailed(f"The audio URL's host {format_value(host)} could not be resolved.")
    return tuple(addresses)


def is_public_address(address: IPAddress) -> bool:
    """True for a globally routable unicast address; IPv4 embedded in IPv6 is judged by the IPv4 part."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def _send(client: httpx.AsyncClient, hop: _Hop) -> httpx.Response:
    """Connect to the checked addresses only, in order: the URL names the IP, while the Host header and
    TLS (SNI and certificate check) keep the host name, so DNS cannot change between check and connect."""
    failure: httpx.ConnectError | None = None
    for address in hop.addresses:
        request = client.build_request(
            "GET",
            hop.url.copy_with(host=str(address)),
            headers={"Host": hop.url.netloc.decode("ascii"), "Accept-Encoding": "identity"},
            extensions={"sni_hostname": hop.url.raw_host.decode("ascii")},
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectError as exc:
            failure = exc  # try the host's next address, as a browser would
        except httpx.InvalidURL:
            # httpx builds a redirect's next request even when it does not follow it, and fails on a
            # Location it cannot join (`http:a.wav`: a scheme, no host, a relative path); issue 13.
            raise DownloadFailed(
                f"{format_value(hop.url.host)} redirected the download to an invalid URL."
            ) from None
    why = ": its TLS certificate is not valid" if "CERTIFICATE" in str(failure).upper() else ""
    raise DownloadFailed(f"Could not connect to {format_value(hop.url.host)} to download the audio{why}.")


async def _refuse_other_schemes(response: httpx.Response) -> None:
    """Refuse a redirect to another scheme (`data:`, `mailto:`, `file:`) as `_checked_hop` would, from
    httpx's response hook: httpx runs it before it builds the redirect's next request, which fails
    with an unhandled `InvalidURL` on a hostless target such as a `data:` URI (issue 13)."""
    location = response.headers.get("location", "") if response.status_code in _REDIRECT_STATUSES else ""
    match = _SCHEME.match(location.strip())  # one letter is a scheme here: a Location is never a path
    if match is not None and match.group(1).lower() not in ("http", "https"):
        raise _other_scheme(match.group(1).lower())


def _other_scheme(scheme: str) -> ForbiddenSource:
    return ForbiddenSource(
        f"Only http and https audio URLs are followed, not a '{format_value(scheme)}:' URL."
    )


def _redirect_location(response: httpx.Response) -> str | None:
    """The redirect target, None for a success; raises for any other status."""
    status = response.status_code
    if status in _REDIRECT_STATUSES and response.headers.get("location"):
        return response.headers["location"]
    if not response.is_success:
        raise DownloadFailed(
            f"Downloading the audio failed: the server answered HTTP {status} {response.reason_phrase}. "
            "Check that the URL is right and publicly readable.",
            status=status,
        )
    return None


async def _read_body(response: httpx.Response, limits: AudioLimits) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        check_size(int(declared), limits)  # refuse before reading a byte of an announced oversize body
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if limits.max_bytes is not None and received > limits.max_bytes:
            limit = format_bytes(limits.max_bytes)
            raise AudioTooLarge(f"Audio is larger than {limit}; qasr accepts at most {limit}.")
        chunks.append(chunk)
    return b"".join(chunks)


def _host_and_port(entry: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` as (normalised host, port or None)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a bare host, or an IPv6 address without brackets
        host, port = entry, ""
    return _normal_host(host), int(port) if port.isdigit() else None


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()
