"""One inference request from admission to result: the order of these steps is the overload policy.

1. Admission, checked: a full queue answers 429 before a byte of the upload is read, and so does a
   queue estimated to take longer than the request's timeout (a client that sends `timeout`, its
   latency budget, gets a fast refusal rather than a late answer). No place is held yet.
2. Read, bounded in size (413), in time (BODY_TIMEOUT_S and the request's deadline: 408) and in memory
   across requests (MAX_UPLOAD_BUFFER_BYTES: 429). A slow client holds a connection, never a queue place:
   70 clients trickling a byte a second used to hold every place of a queue of 64 (issue 16).
3. Admission, taken: a place in the queue, so a process holds at most `max_queue` images per model.
4. Decode (pixel-capped, shrunk to `max_image_side`) on a bounded thread pool; the upload's bytes go.
5. Queue with the request's deadline; a deadline that passes while queued is a 504, never computed.
6. While waiting, watch the connection: a client that leaves before its batch starts is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

import anyio
import torch
from starlette.requests import Request
from starlette.types import Receive

from models import ImageRefusedError, Query
from service.admission import (
    BatcherStoppedError,
    DeadlineExceededError,
    DeadlineUnreachableError,
    QueueFullError,
    Ticket,
    WorkerDiedError,
)
from service.batching import Completed
from service.errors import ApiError, client_gone
from service.imaging import DecodedImage, decode_image
from service.runtime import Job, Output, Runtime, TaskModel
from service.uploads import UploadBudget, read_image_bytes

log = logging.getLogger(__name__)


def queue_full(task: str, retry_after_s: float) -> ApiError:
    return _retry_later("queue_full", f"the {task} queue is full", retry_after_s)


def deadline_unreachable(task: str, retry_after_s: float) -> ApiError:
    reason = f"the {task} queue would not reach this image within the request timeout"
    return _retry_later("queue_too_slow", reason, retry_after_s)


def _retry_later(code: str, reason: str, retry_after_s: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after_s))  # Retry-After takes whole seconds
    return ApiError(429, code, f"{reason}; retry in {seconds} s", {"Retry-After": str(seconds)})


async def run(
    request: Request, runtime: Runtime, uploads: UploadBudget, model: TaskModel, job_query: Query, deadline: float
) -> tuple[DecodedImage, Completed[Output]]:
    """Check, read, admit, decode, queue and wait; every failure is an ApiError. `deadline`: a perf_counter time."""
    settings = runtime.settings
    with _admit(model, deadline):  # only a check: released at once, so a slow upload holds no place
        pass
    reservation = uploads.reservation()
    try:
        body_deadline = min(deadline, time.perf_counter() + settings.body_timeout_s)
        data = await read_image_bytes(request, settings.max_image_bytes, reservation, body_deadline)
        with _admit(model, deadline) as ticket:  # released unless the item reaches the queue
            image = await anyio.to_thread.run_sync(decode_image, data, model.limits, limiter=runtime.decode_limiter)
            del data
            reservation.release()
            completed = await _wait(request, model, Job(image, job_query), deadline - time.perf_counter(), ticket)
    finally:
        reservation.release()
    return image, completed


def _admit(model: TaskModel, deadline: float) -> Ticket:
    task = model.manifest.task
    try:
        return model.batcher.admit(within_s=deadline - time.perf_counter())
    except DeadlineUnreachableError as exc:
        raise deadline_unreachable(task, exc.retry_after_s) from None
    except QueueFullError as exc:
        raise queue_full(task, exc.retry_after_s) from None
    except BatcherStoppedError as exc:
        raise _stopped(exc) from None


async def _wait(request: Request, model: TaskModel, job: Job, timeout_s: float, ticket: Ticket) -> Completed[Output]:
    task = model.manifest.task
    if timeout_s <= 0:
        raise ApiError(504, "deadline_exceeded", f"the request timeout passed before the {task} queue was reached")
    result = asyncio.ensure_future(model.batcher.submit(job, timeout_s, ticket))
    gone = asyncio.ensure_future(_disconnected(request.receive))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        client_left = not result.done()
        if client_left:  # or this handler was cancelled: either way the batcher skips the item
            result.cancel()
    if client_left:
        raise client_gone("the client went away while its image was queued")
    try:
        return result.result()
    except DeadlineExceededError:
        raise ApiError(504, "deadline_exceeded", f"no {task} result within the request timeout") from None
    except BatcherStoppedError as exc:
        raise _stopped(exc) from None
    except torch.cuda.OutOfMemoryError:
        # Even alone, this image does not fit in device memory (the batch was halved down to it).
        raise ApiError(507, "out_of_memory", f"the {task} model ran out of device memory on this image") from None
    except ImageRefusedError as exc:  # the predictor refused this image (its neighbours in the batch still ran)
        raise ApiError(422, "unprocessable_image", f"the model cannot process this image: {exc}") from None
    except Exception as exc:  # any other error, ValueErrors included, is a bug of ours: logged, counted, 500
        log.exception("%s inference failed", task)
        raise ApiError(500, "inference_failed", f"{task} inference failed; see the server log") from exc


async def _disconnected(receive: Receive) -> None:
    """Returns once the client has gone. The body was read already, so the server sends nothing else."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _stopped(exc: BatcherStoppedError) -> ApiError:
    if isinstance(exc, WorkerDiedError):
        return ApiError(503, "unavailable", "the model's worker has stopped; the service needs a restart")
    return ApiError(503, "shutting_down", "the service is shutting down", {"Retry-After": "5"})
