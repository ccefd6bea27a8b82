"""What the routes share: the runtime (settings, pipeline, scheduler, upload store), plus auth and
model-name checks."""

from __future__ import annotations

import asyncio
import hmac
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fastapi import Request

from qasr.api.edge import bounded_stream
from qasr.audio.sources import SourcePolicy
from qasr.audio.uploads import UploadStore
from qasr.engine.scheduler import Admission, Priority
from qasr.errors import (
    ClientGone,
    EngineUnavailable,
    InvalidRequest,
    ModelNotFound,
    RequestTimeout,
    Unauthorized,
    format_value,
)
from qasr.runtime import Runtime
from qasr.settings import Settings
from qasr.transcriber import AsrScheduler, Transcriber

T = TypeVar("T")
MAX_CONTEXT_TOKENS = 10_000
MAX_CONTEXT_CHARS = 16 * MAX_CONTEXT_TOKENS
"""No tokenizer of this family packs 16 characters into every token of a context: longer is refused
without tokenizing it."""
_CONTEXT_SLICE_CHARS = 8192
"""Tokenized a slice at a time; a slice boundary may split a token, which moves the count by one."""

# qwen3-asr-flash, its dated snapshots and the US-region names (spec section 7).
_CLOUD_NAMES = re.compile(r"^qwen3-asr-flash(-\d{4}-\d{2}-\d{2})?(-us)?$")
_FILETRANS_NAMES = re.compile(r"^qwen3-asr-flash-filetrans(-\d{4}-\d{2}-\d{2})?(-us)?$")


@dataclass
class Services:
    runtime: Runtime

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def transcriber(self) -> Transcriber:
        return self.runtime.transcriber

    @property
    def scheduler(self) -> AsrScheduler:
        return self.runtime.scheduler

    @property
    def uploads(self) -> UploadStore:
        assert self.runtime.uploads is not None, "the server's runtime has an upload store"
        return self.runtime.uploads

    def check_key(self, request: Request) -> str | None:
        """The caller's API key when keys are configured (and valid); None when the server is open."""
        if not self.settings.api_keys:
            return None
        headers = request.headers.getlist("authorization")
        if len(headers) > 1:  # proxies and frameworks disagree on which one counts: refuse both
            raise Unauthorized("Send one Authorization header, not several.")
        # The scheme is case-insensitive (RFC 9110 section 11.1): Bearer, bearer and BEARER all work.
        scheme, _, key = (headers[0] if headers else "").strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthorized("No API key provided: send `Authorization: Bearer <key>`.")
        if not any(hmac.compare_digest(key.encode(), k.encode()) for k in self.settings.api_keys):
            raise Unauthorized("Invalid API-key provided.")
        return key

    def check_model(self, name: str | None, *, uploads: bool = False) -> str:
        """Accept the cloud names and the configured model's own names; refuse anything else.
        `uploads`: a policy for the SDK's upload flow, which may also name the async file model (its
        users upload a local file for `qwen3-asr-flash-filetrans` before they submit the job)."""
        if not name:
            raise ModelNotFound("No model given: use qwen3-asr-flash.")
        model = self.settings.model
        own = {self.settings.served_model_name, model, Path(model).name, model.rsplit("/", 1)[-1]}
        if _CLOUD_NAMES.match(name) or name in own or (uploads and _FILETRANS_NAMES.match(name)):
            return name
        raise ModelNotFound(
            f"Model {format_value(name)} does not exist here; this server serves qwen3-asr-flash "
            f"({Path(model).name or model})."  # the model's name, never its server path
        )

    def source_policy(self, api_key: str | None, model: str) -> SourcePolicy:
        """What a remote caller may reference: no server files unless allowed, public URLs only."""
        return SourcePolicy(
            allow_local_dirs=tuple(self.settings.allow_local_dirs),
            allow_any_local=False,
            allow_url_hosts=tuple(self.settings.allow_url_hosts),
            url_map=dict(self.settings.url_map),
            timeout_s=self.settings.download_timeout_s,
            resolve_upload=lambda key: self.uploads.resolve(key, api_key, model),
        )

    def admit(self) -> Admission:
        """A place in the model's queue for an interactive request, or `Overloaded` (429) at once:
        taken before the body is read, fetched or decoded (issue 12)."""
        return self.scheduler.admit(Priority.INTERACTIVE)

    async def check_context(self, context: str) -> None:
        """The cloud accepts up to 10 000 tokens of context (spec section 7). A context of up to that
        many characters cannot be longer (a token is at least one character) and one of over 16 times
        as many characters is refused unread; only the rest is tokenized, off the event loop, in
        slices that stop once the limit is passed (bounded memory)."""
        if len(context) <= MAX_CONTEXT_TOKENS:
            return
        # A new exception at each raise: one kept in a local would tie this frame (and the request's
        # body) into a reference cycle that only the garbage collector frees (issue 13, memory).
        if len(context) > MAX_CONTEXT_CHARS or await asyncio.to_thread(self._over_token_limit, context):
            raise InvalidRequest(
                f"The context (system message) is longer than {MAX_CONTEXT_TOKENS} tokens; shorten it.",
                param="input.messages",
            )

    def _over_token_limit(self, context: str) -> bool:
        count = self.runtime.engine.count_text_tokens
        tokens = 0
        for start in range(0, len(context), _CONTEXT_SLICE_CHARS):
            tokens += count(context[start : start + _CONTEXT_SLICE_CHARS])
            if tokens > MAX_CONTEXT_TOKENS:
                return True
        return False

    def stream(self, items: AsyncGenerator[T, None]) -> AsyncIterator[T]:
        """A pipeline stream under the request time limit (see `qasr.api.edge.bounded_stream`)."""
        return bounded_stream(items, self.settings.request_timeout_s)

    def public_base(self, request: Request) -> str:
        return (self.settings.public_base_url or str(request.base_url)).rstrip("/")

    async def bounded(self, request: Request, work: Awaitable[T]) -> T:
        """Run `work` under the request time limit; cancel it if the client goes away."""
        task = asyncio.ensure_future(work)
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait(
                {task, watcher}, timeout=self.settings.request_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if task in done:
                return task.result()
            task.cancel()
            if watcher in done:  # the client left: its work is cancelled; the answer is for the log
                raise ClientGone("The client closed the connection; the request was cancelled.")
            raise RequestTimeout(
                f"The request took longer than {self.settings.request_timeout_s:.0f} s and was stopped."
            )
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()


async def _wait_disconnect(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(0.25)


def services(request: Request) -> Services:
    """The running services, or `EngineUnavailable` (503, Retry-After) while the model still loads."""
    svc: Services | None = request.app.state.services
    if svc is None:
        raise EngineUnavailable("The server is starting (the model is loading); retry shortly.")
    return svc
