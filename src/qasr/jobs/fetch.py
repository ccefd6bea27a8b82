"""A job's input as a local file, under the same rules as the synchronous API (`qasr.audio.sources`).

Long recordings (up to 2 GB by default) are never held in memory: an http(s) download streams into a
file in the job's work directory, with every hop checked by the sync API's own SSRF checks before it
connects, and the byte limit enforced while it arrives. Everything else (an allowed server path, a
mapped URL, an upload) already is a local file; a small `data:` URI is written out.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from qasr.audio import sources
from qasr.audio.decode import check_size, format_bytes
from qasr.audio.sources import SourcePolicy, fetch_source, map_url
from qasr.errors import AudioTooLarge
from qasr.types import AudioLimits

_CHUNK = 1 << 20


async def fetch_to_file(ref: str, policy: SourcePolicy, limits: AudioLimits, dest: Path) -> Path:
    """The local file holding `ref`'s bytes: the checked file itself, or `dest` once written."""
    scheme = ref.split(":", 1)[0].lower() if ":" in ref else ""
    if scheme in ("http", "https"):
        target = map_url(ref, policy.url_map)
        if isinstance(target, str):
            await download_to_file(target, policy, limits, dest)
            return dest
    found = await fetch_source(ref, policy, limits)
    if isinstance(found, Path):
        return found
    await asyncio.to_thread(dest.write_bytes, found)
    return dest


async def download_to_file(url: str, policy: SourcePolicy, limits: AudioLimits, dest: Path) -> None:
    """`qasr.audio.sources.download`, streamed into `dest` instead of memory."""
    await sources.download_with(url, policy, lambda response: _save_body(response, limits, dest))


async def _save_body(response: httpx.Response, limits: AudioLimits, dest: Path) -> None:
    declared = response.headers.get("content-length", "")
    if declared.isdigit():
        check_size(int(declared), limits)
    received = 0
    out = await asyncio.to_thread(dest.open, "wb")
    try:
        async for chunk in response.aiter_bytes(_CHUNK):
            received += len(chunk)
            if limits.max_bytes is not None and received > limits.max_bytes:
                limit = format_bytes(limits.max_bytes)
                raise AudioTooLarge(f"Audio is larger than {limit}; qasr accepts at most {limit}.")
            await asyncio.to_thread(out.write, chunk)
    finally:
        out.close()
