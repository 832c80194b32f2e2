"""A typed HTTP client for a densepred service: one call per image, the JSON answer as a plain dict."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Self, get_args

import httpx

Task = Literal["segment", "detect", "instances"]
TASKS: tuple[Task, ...] = get_args(Task)
ImageSource = bytes | str | os.PathLike[str]
DEFAULT_URL = "http://127.0.0.1:8000"

_MEDIA_TYPES = {b"\xff\xd8\xff": "image/jpeg", b"\x89PNG\r\n\x1a\n": "image/png"}


class DensepredError(Exception):
    """The service answered with an error body `{"error": {"code", "message"}}` (or something unexpected)."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def read_image(image: ImageSource) -> bytes:
    return image if isinstance(image, bytes) else Path(image).read_bytes()


def media_type(data: bytes) -> str:
    """The Content-Type to declare for an upload; the service sniffs the bytes itself and answers 415 if wrong."""
    for magic, media in _MEDIA_TYPES.items():
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


class DensepredClient:
    """`DensepredClient(url).predict("photo.jpg", "detect", score_threshold=0.7)` returns the response dict.

    `api_key`: the server's DENSEPRED_API_KEY, when it has one (sent as a bearer token).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(
        self,
        image: ImageSource,
        task: Task,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        classes: str | Sequence[str] | None = None,
        mask_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Run `task` on one image (a path or the file's bytes); parameters left as None use the service's."""
        params = _params(task, score_threshold, max_detections, classes, mask_threshold)
        return self._post(task, read_image(image), params).json()

    def render(self, image: ImageSource, task: Task, **params: Any) -> bytes:
        """The service's own overlay PNG for this image (`?render=png`); same parameters as `predict`."""
        query = _params(task, **params)
        query["render"] = "png"
        return self._post(task, read_image(image), query).content

    def models(self) -> list[dict[str, Any]]:
        return self._get("/models").json()["models"]

    def status(self, path: str = "/readyz") -> int:
        """The HTTP status of a probe endpoint (`/healthz`, `/readyz`); raises only if the service is unreachable."""
        return self._http.get(path).status_code

    def _post(self, task: Task, data: bytes, params: dict[str, str]) -> httpx.Response:
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, not {task!r}")
        files = {"image": ("image", data, media_type(data))}
        return _checked(self._http.post(f"/{task}", params=params, files=files))

    def _get(self, path: str) -> httpx.Response:
        return _checked(self._http.get(path))


def _params(
    task: Task,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    classes: str | Sequence[str] | None = None,
    mask_threshold: float | None = None,
) -> dict[str, str]:
    if task == "segment" and (score_threshold, max_detections, mask_threshold) != (None, None, None):
        raise ValueError("segment takes only `classes`")
    if task == "detect" and mask_threshold is not None:
        raise ValueError("mask_threshold applies to instances only")
    if classes is not None and not isinstance(classes, str):
        classes = ",".join(classes)
    values = {
        "score_threshold": score_threshold,
        "max_detections": max_detections,
        "classes": classes,
        "mask_threshold": mask_threshold,
    }
    return {name: str(value) for name, value in values.items() if value is not None}


def _checked(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        error = response.json()["error"]
        code, message = str(error["code"]), str(error["message"])
    except (ValueError, KeyError, TypeError):
        # Not the service's error body: e.g. a proxy in front answered on its own.
        code, message = "http_error", response.text[:200] or response.reason_phrase
    retry_after = response.headers.get("Retry-After")
    raise DensepredError(response.status_code, code, message, float(retry_after) if retry_after else None)
