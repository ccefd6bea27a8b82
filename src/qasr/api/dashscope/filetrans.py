"""The cloud's asynchronous file transcription API (`qwen3-asr-flash-filetrans`, docs/spec/filetrans.md):
submit, poll, cancel, list, and the signed result document. Jobs run in the background (`qasr.jobs`);
these handlers only validate, store and read tasks. A caller sees, cancels and lists only the tasks of
its own API key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qasr.api.routing import dashscope_error, guarded_route, json_body, read_json, request_id
from qasr.api.services import Services, services
from qasr.audio.sources import ACCEPTED_FORMS, SourcePolicy, fetch_source
from qasr.errors import (
    EndpointNotFound,
    EngineUnavailable,
    InvalidRequest,
    InvalidUploadPolicy,
    ModelNotFound,
    UnsupportedSource,
    UploadNotFound,
    UploadQuotaExceeded,
    format_value,
)
from qasr.jobs.service import RESULT_PATH, Jobs, job_limits, owner_of
from qasr.jobs.store import FINAL, StoreFull, Task, TaskQuery, TaskStatus
from qasr.jobs.work import JobOptions
from qasr.runtime import Runtime
from qasr.text import itn
from qasr.text.languages import normalize_code

router = APIRouter(route_class=guarded_route(dashscope_error))
log = logging.getLogger(__name__)

SUBMIT_PATH = "/api/v1/services/audio/asr/transcription"
_MODEL_NAMES = re.compile(r"^qwen3-asr-flash-filetrans(-\d{4}-\d{2}-\d{2})?(-us)?$")
_MAX_CHANNELS = 64
_MAX_PAGE_SIZE = 100
_MAX_URL_CHARS = 8192
_JOB_FORMS = "an http(s) URL, an oss:// key from the upload flow, or a server path the operator allowed"


# --- wire schemas -------------------------------------------------------------------------------------


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Corpus(_Lenient):
    text: str = ""


class SubmitParameters(_Lenient):
    language: str | None = None
    enable_itn: bool = False
    enable_words: bool = False
    channel_id: list[int] = Field(default_factory=lambda: [0])
    corpus: _Corpus | None = None


class SubmitInput(_Lenient):
    file_url: str


class SubmitRequest(_Lenient):
    model: str
    input: SubmitInput
    parameters: SubmitParameters = SubmitParameters()


def _parse(body: Any) -> SubmitRequest:
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        req = SubmitRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"Invalid `{where}`: {first['msg']}.", param=where) from None
    channels = req.parameters.channel_id
    if (
        not channels
        or len(set(channels)) != len(channels)
        or not all(0 <= c < _MAX_CHANNELS for c in channels)
    ):
        raise InvalidRequest(
            f"`channel_id` must list distinct channel numbers from 0 to {_MAX_CHANNELS - 1}.",
            param="parameters.channel_id",
        )
    if not req.input.file_url.strip() or len(req.input.file_url) > _MAX_URL_CHARS:
        raise InvalidRequest(f"`input.file_url` must be {_JOB_FORMS}.", param="input.file_url")
    return req


# --- lifecycle (called from the app) --------------------------------------------------------------------


async def start_jobs(app: FastAPI, runtime: Runtime) -> None:
    """Open the task store and start the runner once the runtime is ready; `/api` job routes answer 503
    until then."""
    try:
        jobs = await asyncio.to_thread(Jobs.build, runtime)
        await jobs.start()
    except Exception:
        log.exception("async file jobs could not start; the job API answers 503")
        return
    app.state.jobs = jobs


async def stop_jobs(app: FastAPI) -> None:
    """Stop the runner before the runtime closes: running tasks stay RUNNING and run at the next start."""
    starting: asyncio.Future[None] | None = getattr(app.state, "jobs_starting", None)
    if starting is not None:
        with contextlib.suppress(BaseException):
            await starting  # a start in progress finishes first, so its runner is stopped too
    jobs: Jobs | None = getattr(app.state, "jobs", None)
    app.state.jobs = None
    if jobs is not None:
        with contextlib.suppress(Exception):
            await jobs.close()


def _jobs(request: Request) -> Jobs:
    jobs: Jobs | None = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise EngineUnavailable("The job service is starting (or could not start); retry shortly.")
    return jobs


# --- routes ---------------------------------------------------------------------------------------------


@router.post(SUBMIT_PATH, openapi_extra=json_body(SubmitRequest))
async def submit(request: Request) -> Response:
    """Accept a job; answers only once the task is stored durably."""
    svc = services(request)
    api_key = svc.check_key(request)
    jobs = _jobs(request)
    if request.headers.get("x-dashscope-async", "").lower() != "enable":
        raise InvalidRequest(
            "This API is asynchronous: send the header `X-DashScope-Async: enable`.",
            param="X-DashScope-Async",
        )
    req = _parse(await read_json(request))
    model = _check_model(req.model)
    params = req.parameters
    if params.enable_itn:
        itn.require()
    context = params.corpus.text if params.corpus is not None else ""
    await svc.check_context(context)
    options = JobOptions(
        language=normalize_code(params.language),
        enable_itn=params.enable_itn,
        enable_words=params.enable_words,
        channel_ids=tuple(params.channel_id),
        context=context,
    )
    source = await _checked_source(svc, api_key, model, req.input.file_url.strip())
    task = Task(
        task_id=str(uuid.uuid4()),
        owner=owner_of(api_key),
        model=model,
        file_url=req.input.file_url.strip(),
        source=source,
        params=options.to_json(),
        submit_time=time.time(),
    )
    settings = jobs.settings
    try:
        await asyncio.to_thread(
            jobs.store.add,
            task,
            max_tasks=settings.jobs_max_tasks,
            max_tasks_per_owner=settings.jobs_max_tasks
            if api_key is None
            else settings.jobs_max_tasks_per_key,
        )
    except StoreFull as exc:
        raise UploadQuotaExceeded(exc.message) from None  # 429 without a retry hint: room comes with expiry
    jobs.runner.wake()
    await jobs.runner.refresh_metrics()
    log.info("filetrans %s: task %s accepted", request_id(request), task.task_id)
    return JSONResponse(
        {
            "request_id": request_id(request),
            "output": {"task_id": task.task_id, "task_status": task.status.value},
        }
    )


@router.get("/api/v1/tasks/{task_id}")
async def fetch_task(request: Request, task_id: str) -> Response:
    svc = services(request)
    api_key = svc.check_key(request)
    jobs = _jobs(request)
    task = await _own_task(jobs, task_id, api_key)
    return JSONResponse(_task_body(request, svc, jobs, task))


@router.post("/api/v1/tasks/{task_id}/cancel")
async def cancel_task(request: Request, task_id: str) -> Response:
    svc = services(request)
    api_key = svc.check_key(request)
    jobs = _jobs(request)
    task = await _own_task(jobs, task_id, api_key)
    if task.status in FINAL:
        raise InvalidRequest(f"The task has already ended ({task.status.value}); it cannot be cancelled.")
    cancelled = await asyncio.to_thread(jobs.store.cancel, task_id, owner_of(api_key), time.time())
    if cancelled is None:
        raise _no_task(task_id)
    if cancelled.status is TaskStatus.CANCELED:
        jobs.runner.stop(task_id)
    await jobs.runner.refresh_metrics()
    return JSONResponse(_task_body(request, svc, jobs, cancelled))


@router.get("/api/v1/tasks")
async def list_tasks(
    request: Request,
    page_no: int = 1,
    page_size: int = 10,
    status: str | None = None,
    model_name: str | None = None,
    start_time: str | None = None,
    end_time: str | None = None,
) -> Response:
    svc = services(request)
    api_key = svc.check_key(request)
    jobs = _jobs(request)
    if page_no < 1 or not 1 <= page_size <= _MAX_PAGE_SIZE:
        raise InvalidRequest(f"`page_no` must be 1 or more and `page_size` from 1 to {_MAX_PAGE_SIZE}.")
    query = TaskQuery(
        status=_status(status),
        model=model_name or None,
        start_time=_list_time(start_time, "start_time"),
        end_time=_list_time(end_time, "end_time"),
        page_no=page_no,
        page_size=page_size,
    )
    tasks, total = await asyncio.to_thread(jobs.store.page, owner_of(api_key), query)
    return JSONResponse(
        {
            "request_id": request_id(request),
            "data": [_summary(t) for t in tasks],
            "total": total,
            "total_page": math.ceil(total / page_size),
            "page_no": page_no,
            "page_size": page_size,
        }
    )


@router.get(RESULT_PATH + "/{name}")
async def result_document(request: Request, name: str, Expires: str = "", Signature: str = "") -> Response:
    """The result document: no API key, the signature and expiry in the URL authorise the GET."""
    jobs = _jobs(request)
    task_id = name.removesuffix(".json")
    if not jobs.signer.check(task_id, Expires[:16], Signature[:128], time.time()):
        raise InvalidUploadPolicy("The result URL is invalid or has expired; poll the task for a new one.")
    task = await asyncio.to_thread(jobs.store.get, task_id)
    if task is None or task.result_name is None:
        raise _no_task(task_id)
    path = jobs.results.path(task.result_name)
    if not await asyncio.to_thread(path.is_file):
        raise _no_task(task_id)
    return FileResponse(path, media_type="application/json")


# --- helpers --------------------------------------------------------------------------------------------


def _check_model(name: str) -> str:
    if _MODEL_NAMES.match(name):
        return name
    raise ModelNotFound(
        f"Model {format_value(name)} does not exist for this API; use qwen3-asr-flash-filetrans."
    )


async def _checked_source(svc: Services, api_key: str | None, model: str, ref: str) -> str:
    """What the runner will read. An `oss://` key is resolved now (its owner checked) to its stored
    file; a server path is checked against the allowed directories now, so a refused one is a 400 and
    not a failed task; an http(s) URL is checked hop by hop when the job downloads it."""
    scheme = ref.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", ref) else ""
    if scheme in ("http", "https"):
        return ref
    if scheme == "oss":
        return str(await asyncio.to_thread(_resolve_upload, svc, ref, api_key, model))
    if scheme in ("", "file"):
        policy = SourcePolicy(allow_local_dirs=tuple(svc.settings.allow_local_dirs))
        return str(await fetch_source(ref, policy, job_limits(svc.settings)))
    raise UnsupportedSource(
        f"`input.file_url` starting with '{format_value(scheme)}:' is not supported; send {_JOB_FORMS}."
        if scheme != "data"
        else f"A job reads a file, not a data URI; send {_JOB_FORMS} (other APIs take {ACCEPTED_FORMS})."
    )


def _resolve_upload(svc: Services, ref: str, api_key: str | None, model: str) -> Path:
    """The uploaded file of `ref`, uploaded for this model or for the sync model of the same server
    (the SDK's upload flow asks a policy for a model name; both belong to this family)."""
    names = dict.fromkeys([model, "qwen3-asr-flash", svc.settings.served_model_name])
    error: UploadNotFound | None = None
    for name in names:
        try:
            return svc.uploads.resolve(ref, api_key, name)
        except UploadNotFound as exc:
            error = error or exc
    assert error is not None
    raise error


async def _own_task(jobs: Jobs, task_id: str, api_key: str | None) -> Task:
    task = await asyncio.to_thread(jobs.store.get, task_id[:64], owner_of(api_key))
    if task is None:
        raise _no_task(task_id)
    return task


def _no_task(task_id: str) -> EndpointNotFound:
    return EndpointNotFound(f"No task {format_value(task_id)} here (it never existed, or it has expired).")


def _task_body(request: Request, svc: Services, jobs: Jobs, task: Task) -> dict[str, Any]:
    """The cloud's task answer (spec section 2); `progress` (0 to 1) is a qasr extension."""
    output: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status.value,
        "submit_time": _cloud_time(task.submit_time),
    }
    if task.scheduled_time is not None:
        output["scheduled_time"] = _cloud_time(task.scheduled_time)
    if task.end_time is not None:
        output["end_time"] = _cloud_time(task.end_time)
    failed = int(task.status in (TaskStatus.FAILED, TaskStatus.CANCELED))
    succeeded = int(task.status is TaskStatus.SUCCEEDED)
    output["task_metrics"] = {"TOTAL": 1, "SUCCEEDED": succeeded, "FAILED": failed}
    live = jobs.runner.live.get(task.task_id)
    if task.status is TaskStatus.RUNNING:
        output["progress"] = round(live.progress, 4) if live is not None else 0.0
    elif task.status is TaskStatus.SUCCEEDED:
        output["progress"] = 1.0
    body: dict[str, Any] = {"request_id": request_id(request), "output": output}
    if task.status is TaskStatus.SUCCEEDED and task.result_name is not None:
        url = jobs.result_url(svc.public_base(request), task, time.time())
        output["result"] = {"transcription_url": url}
        body["usage"] = {"seconds": math.ceil(task.audio_s or 0.0)}
    if task.code is not None:
        output["code"], output["message"] = task.code, task.message or task.code
    return body


def _summary(task: Task) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task_id": task.task_id,
        "task_status": task.status.value,
        "model_name": task.model,
        "submit_time": _cloud_time(task.submit_time),
    }
    if task.end_time is not None:
        out["end_time"] = _cloud_time(task.end_time)
    return out


def _cloud_time(epoch_s: float) -> str:
    """`2025-10-27 14:19:31.150`, the cloud's format, in the server's local time."""
    whole = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))
    return f"{whole}.{int(epoch_s * 1000) % 1000:03d}"


def _status(value: str | None) -> TaskStatus | None:
    if not value:
        return None
    try:
        return TaskStatus(value.upper())
    except ValueError:
        names = ", ".join(s.value for s in TaskStatus)
        raise InvalidRequest(f"`status` must be one of {names}.", param="status") from None


def _list_time(value: str | None, name: str) -> float | None:
    """The SDK's `20230420000000` (local time) as seconds since the epoch."""
    if not value:
        return None
    try:
        return time.mktime(time.strptime(value, "%Y%m%d%H%M%S"))
    except (ValueError, OverflowError):
        raise InvalidRequest(f"`{name}` must be a time written YYYYMMDDhhmmss.", param=name) from None
