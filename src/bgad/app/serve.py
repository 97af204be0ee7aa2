"""``bgad serve``: one model behind an HTTP API and a web page, for the inspection line.

FastAPI on uvicorn: request parsing, multipart uploads and an OpenAPI schema (``/openapi.json``; no ``/docs`` page,
whose scripts would come from a CDN) come with the standard ASGI stack integrators already run; the model stays a
plain :class:`bgad.BGAD` or :class:`bgad.deploy.export.OnnxDetector`.

Concurrency: uploads are received and decoded in the server's thread pool, several at a time; the model runs one
request at a time behind a lock, because a forward pass already uses every core and, on CPU, EfficientNet is slower
per image in larger batches (docs/performance.md), so merging requests into batches would not help. ``/health``,
``/model`` and ``/review`` never wait for the model. Every bad upload is a 4xx with a JSON ``{"error": ...}``; the
server keeps serving. A score that is not a finite number is a 500 with a JSON error, never a verdict.

Memory and hostile clients (:class:`RequestGuard`, :class:`MemoryBudget`): each body's size limit is counted as
the body streams in (chunked uploads too), so a request over it is refused (413) without being read whole; a body
that stops arriving is refused (408); decoded images waiting for the model share a memory budget (a request
waits for its share, or gets a 503); and a request whose ``Host`` names another server is refused (400), so a web
page cannot reach a server on this machine through DNS rebinding.

The page's review list comes from ``POST /review``, which ranks the scores the page already has by the rule of
``bgad predict --review`` (:func:`bgad.app.review.review_order`): the rule lives in one place.
"""

# No ``from __future__ import annotations``: FastAPI reads the endpoints' annotations, which name FastAPI types
# imported inside create_app (FastAPI is an optional extra).
import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .._version import __version__
from ..data.checks import size_problem
from ..data.images import IMAGE_FORMATS, decode_image
from ..deploy.export import ONNX_FILE
from ..errors import BGADError
from ..inference import Detector, Prediction
from ..method.thresholds import NormalTail, Thresholds, normalized_score
from ..storage.model_checks import ScoringError
from ..storage.model_files import MODEL_JSON, model_id
from .review import review_order
from .runs import METRICS_JSON
from .visualize import heatmap_overlay

MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 50_000_000  # 50 megapixels: larger images are refused before their pixels are decoded
MAX_FILES = 64  # per batch request
MAX_REVIEWED = 100_000  # images in one review request (a session's checked images)
MAX_REVIEW_BYTES = 20 * 1024 * 1024  # a /review body: MAX_REVIEWED images named with up to 100 characters
BODY_TIMEOUT_S = 30.0  # a request body that stops arriving for this long is refused (408)
MEMORY_BUDGET_BYTES = 1024**3  # decoded images, with their maps, held at once (MemoryBudget)
BUDGET_WAIT_S = 120.0  # how long a request waits for its share of the budget before a 503
# One request's peak memory per pixel of its image, measured on a 7000 x 7000 upload: 17.3 bytes with maps=png
# (decoded file, RGB copy, full-size anomaly map, mask and overlay), 12.8 without maps; the budget charges this.
BYTES_PER_PIXEL = 18
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::"})
HOST_HEADER = re.compile(r"(?:\[(?P<ip6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9._-]+))(?::\d{1,5})?")
RAW_MAP_SIDE = 320  # the longest side of the anomaly map returned with maps=raw (the page thresholds it)
IMAGE_TYPES = ("image/", "application/octet-stream")
Maps = Literal["none", "png", "raw"]

log = logging.getLogger("bgad.serve")


class UploadError(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _request_error(status: int, message: str, **headers: str) -> Exception:
    """Starlette's HTTPException (imported here: FastAPI is an optional extra): FastAPI passes it through from a
    body read, where it turns any other exception into a 400."""
    from starlette.exceptions import HTTPException

    return HTTPException(status, message, headers=headers or None)


def _require_serving_packages() -> Any:
    try:
        import fastapi
        import python_multipart  # noqa: F401  (FastAPI's form parser)
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise BGADError(f"bgad serve needs its extra: pip install 'bgad[serve]' ({err})") from None
    return fastapi


def model_description(run: Path, detector: Detector, thresholds: Thresholds | None = None) -> dict[str, Any]:
    """What ``GET /model`` returns: identity, configuration, the thresholds served (default: the model's own) and
    (for a run folder) its metrics."""
    onnx_file = run / ONNX_FILE if run.is_dir() else run
    source = run / MODEL_JSON if detector.engine == "torch" else onnx_file
    description = {
        "model_id": model_id(source),
        "source": str(run),
        "engine": detector.engine,
        "bgad_version": __version__,
        "config": detector.configuration.to_dict(),
        "thresholds": (thresholds or detector.thresholds_)._asdict(),
        # The page's normalized scores at any threshold (bgad.method.thresholds.NormalTail.table).
        "normal_tail": None if detector.normal_scores_ is None else NormalTail(detector.normal_scores_).table(),
    }
    metrics = run / METRICS_JSON if run.is_dir() else None
    if metrics is not None and metrics.is_file():
        description["training_metrics"] = {k: v for k, v in json.loads(metrics.read_text()).items() if k != "per_type"}
    return description


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _raw_map(anomaly_map: np.ndarray) -> dict[str, Any]:
    """The map at most :data:`RAW_MAP_SIDE` on its longest side, as little-endian float32 in base64."""
    height, width = anomaly_map.shape
    scale = min(1.0, RAW_MAP_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = np.asarray(Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
    data = base64.b64encode(small.astype("<f4").tobytes()).decode("ascii")
    return {"width": size[0], "height": size[1], "dtype": "float32", "data": data}


class Scorer:
    """The model and its lock: decoding runs in parallel, the forward pass one request at a time."""

    def __init__(
        self, detector: Detector, description: dict[str, Any], max_pixels: int, thresholds: Thresholds | None = None
    ):
        self.detector, self.description, self.max_pixels = detector, description, max_pixels
        self.thresholds = thresholds or detector.thresholds_  # the model's own unless the command line set others
        scores = detector.normal_scores_
        self.normal_tail = None if scores is None else NormalTail(scores)  # built once: /review uses it per image
        self._lock = threading.Lock()

    def memory_needed(self, data: bytes) -> int:
        """The bytes scoring ``data`` takes at its peak (:data:`BYTES_PER_PIXEL`), read from the image's header
        without decoding it; none for an upload that decoding refuses (unreadable, over ``max_pixels``)."""
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
                pixels = image.width * image.height
        except (OSError, ValueError, Image.DecompressionBombError):
            return 0
        return 0 if pixels > self.max_pixels else pixels * BYTES_PER_PIXEL

    def score(self, data: bytes, name: str, maps: Maps) -> dict[str, Any]:
        start = time.perf_counter()
        try:
            picture = decode_image(data, name, max_pixels=self.max_pixels)
        except BGADError as err:
            raise UploadError(400, str(err)) from None
        if problem := size_problem(picture, name):
            raise UploadError(400, problem)
        decoded = time.perf_counter()
        with self._lock:
            inference_start = time.perf_counter()
            try:
                prediction: Prediction = self.detector.predict(picture, thresholds=self.thresholds)
            except ScoringError as err:
                raise ScoringError(f"{name}: {err}") from None
            inference_end = time.perf_counter()
        result = {
            "file": name,
            "score": prediction.score,
            "normalized_score": prediction.normalized_score,
            "normal_share": prediction.normal_share,
            "is_anomalous": prediction.is_anomalous,
            "map_peak": float(prediction.anomaly_map.max()),  # for the review list (POST /review)
            "thresholds": self.thresholds._asdict(),
            "image": {"width": picture.width, "height": picture.height},
            "model": {"id": self.description["model_id"], "bgad_version": __version__},
        }
        if maps == "png":
            overlay = heatmap_overlay(np.asarray(picture), prediction.anomaly_map, threshold=self.thresholds.pixel)
            result["overlay_png"] = _png(overlay)
            result["mask_png"] = _png(prediction.mask.astype(np.uint8) * 255)
        elif maps == "raw":
            result["anomaly_map"] = _raw_map(prediction.anomaly_map)
        end = time.perf_counter()
        result["timing_ms"] = {
            "decode": round(1000 * (decoded - start), 2),
            "wait": round(1000 * (inference_start - decoded), 2),
            "inference": round(1000 * (inference_end - inference_start), 2),
            "total": round(1000 * (end - start), 2),
        }
        return result


class MemoryBudget:
    """Bytes that images being scored may take at once. A request holds its share from decoding to its answer and
    waits while the others' shares leave no room, up to ``wait_s``, then gets a 503. A share larger than the whole
    budget is cut to it: such an image is scored alone."""

    def __init__(self, capacity: int, wait_s: float):
        self.capacity, self.wait_s, self.held = capacity, wait_s, 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def share(self, size: int) -> AsyncIterator[None]:
        size = min(size, self.capacity)
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.held + size <= self.capacity), self.wait_s)
            except asyncio.TimeoutError:
                raise _request_error(503, "busy: other images fill the server's memory budget; retry") from None
            self.held += size
        try:
            yield
        finally:
            async with self._changed:
                self.held -= size
                self._changed.notify_all()


def _host_name(header: str) -> str:
    """The name or address in a Host header, without its port; "" for anything else."""
    match = HOST_HEADER.fullmatch(header.strip().lower())
    return "" if match is None else match["ip6"] or match["name"]


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_check(bind: str) -> Callable[[str], bool]:
    """Whether a Host header names this server, bound to ``bind``: a loopback name, ``bind`` itself, and for a
    wildcard bind (``0.0.0.0``) this machine's names or any IP address. A page that DNS rebinding points at this
    machine sends its own domain name as the Host, so it is refused."""
    bind = bind.strip("[]").lower()
    wildcard = bind in WILDCARD_HOSTS
    names = LOOPBACK_NAMES | ({socket.gethostname().lower(), socket.getfqdn().lower()} if wildcard else {bind})

    def served(header: str) -> bool:
        name = _host_name(header)
        return name in names or (wildcard and _is_ip_address(name))

    return served


class RequestGuard:
    """ASGI middleware: the Host check, then each request body's size limit (by path) and read timeout, enforced
    while the body streams in, so that nothing over its limit is ever held whole."""

    def __init__(self, app: Any, *, limits: dict[str, int], timeout_s: float, served: Callable[[str], bool]):
        self.app, self.limits, self.timeout_s, self.served = app, limits, timeout_s, served

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        host, declared = headers.get("host", ""), headers.get("content-length", "")
        limit = self.limits.get(scope["path"], min(self.limits.values()))
        if not self.served(host):
            message = f"Host {host!r} is not this server's address (a DNS-rebinding guard): use localhost or --host"
            await _send_error(send, 400, message)
        elif declared.isdigit() and int(declared) > limit:
            await _send_error(send, 413, f"request body of {int(declared)} bytes is over the limit of {limit}")
        else:
            await self.app(scope, self._metered(receive, limit), send)

    def _metered(self, receive: Callable, limit: int) -> Callable:
        """``receive`` that refuses a body past ``limit`` bytes (413) or stalled for ``timeout_s`` (408)."""
        received, complete = 0, False

        async def metered() -> dict[str, Any]:
            nonlocal received, complete
            if complete:  # the body is in: what follows is the wait for a disconnect, which has no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                stalled = f"the request body stopped arriving for {self.timeout_s:g} s"
                raise _request_error(408, stalled, connection="close") from None
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received > limit:
                raise _request_error(413, f"request body over the limit of {limit} bytes")
            return message

        return metered


async def _send_error(send: Callable, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(
    scorer: Scorer,
    *,
    host: str = "127.0.0.1",
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_review_bytes: int = MAX_REVIEW_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    memory_budget_bytes: int = MEMORY_BUDGET_BYTES,
    budget_wait_s: float = BUDGET_WAIT_S,
) -> Any:
    """The ASGI application serving ``scorer`` (see the module docstring) on the address ``host`` (the Host check).
    ``app.state.budget`` is its :class:`MemoryBudget`."""
    fastapi = _require_serving_packages()
    from fastapi import Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from pydantic import BaseModel, Field
    from starlette.exceptions import HTTPException

    app = fastapi.FastAPI(
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN: blank offline, a third party online
        redoc_url=None,
        title="bgad",
        version=__version__,
        description="Supervised anomaly detection with BGAD: score images, get heatmaps and defect masks.",
    )
    limits = {
        "/predict": max_upload_bytes,
        "/predict/batch": max_upload_bytes * MAX_FILES,
        "/review": max_review_bytes,
    }
    app.add_middleware(RequestGuard, limits=limits, timeout_s=body_timeout_s, served=host_check(host))
    budget = app.state.budget = MemoryBudget(memory_budget_bytes, budget_wait_s)
    page = resources.files("bgad.app").joinpath("static/index.html").read_text(encoding="utf-8")
    upload_body = {
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}}
                },
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            },
            "required": True,
        }
    }

    @app.exception_handler(UploadError)
    async def refused(_: Request, err: UploadError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(ScoringError)
    async def cannot_score(_: Request, err: ScoringError) -> JSONResponse:
        log.error("%s", err)  # the model, not the request, is at fault: a server error, never a verdict
        return JSONResponse({"error": str(err)}, status_code=500)

    @app.exception_handler(Exception)
    async def failed(_: Request, err: Exception) -> JSONResponse:
        log.exception("request failed")
        return JSONResponse({"error": f"internal error: {type(err).__name__} (see the server log)"}, status_code=500)

    async def uploads(request: Request, *, many: bool) -> list[tuple[str, Callable[[], Awaitable[bytes]]]]:
        """The uploaded files, each with a function that reads it (a batch is read one file at a time): multipart
        fields (``file``, or any number for a batch), or one raw image body."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/form-data"):
            form = await request.form(max_files=MAX_FILES, max_part_size=max_upload_bytes)
            files = [(value.filename or key, value) for key, value in form.multi_items() if hasattr(value, "read")]
            if not files:
                raise UploadError(400, "no file in the form: send the image as the field 'file'")
            if len(files) > 1 and not many:
                raise UploadError(400, "one image per request here; use /predict/batch for several")
            too_big = [name for name, value in files if value.size > max_upload_bytes]
            if too_big:
                raise UploadError(413, f"{too_big[0]} is over the limit of {max_upload_bytes} bytes")
            return [(name, value.read) for name, value in files]
        if not content_type.startswith(IMAGE_TYPES):
            raise UploadError(415, f"unsupported content type {content_type or 'none'!r}: send an image or a form")
        return [("upload", request.body)]

    async def score(data: bytes, name: str, maps: Maps) -> dict[str, Any]:
        async with budget.share(scorer.memory_needed(data)):
            return await run_in_threadpool(scorer.score, data, name, maps)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: answers at once, even while the model is busy."""
        return {"status": "ok", "model_id": scorer.description["model_id"]}

    @app.get("/model")
    async def model() -> dict[str, Any]:
        """The model's identity, configuration, thresholds and (for a run folder) training metrics."""
        return scorer.description

    class CheckedImage(BaseModel):
        file: str = Field(max_length=1000)
        score: float = Field(allow_inf_nan=False)
        map_peak: float = Field(allow_inf_nan=False, description="the largest anomaly-map value (/predict: map_peak)")

    class ReviewRequest(BaseModel):
        images: list[CheckedImage] = Field(max_length=MAX_REVIEWED)
        n: int = Field(5, ge=1, le=MAX_REVIEWED, description="images near the threshold; as many hidden regions")
        image_threshold: float | None = Field(None, allow_inf_nan=False, description="default: the model's")
        pixel_threshold: float | None = Field(None, allow_inf_nan=False, description="default: the model's")

    @app.post("/review")
    async def review(body: ReviewRequest) -> dict[str, Any]:
        """What to label next among images already scored (their ``score`` and ``map_peak`` from /predict), by the
        rule of ``bgad predict --review``: the ``n`` nearest the image threshold, then those judged good whose map
        rises above the pixel threshold, highest peaks first."""
        model = scorer.thresholds
        thresholds = Thresholds(
            image=model.image if body.image_threshold is None else body.image_threshold,
            pixel=model.pixel if body.pixel_threshold is None else body.pixel_threshold,
        )
        images = body.images
        order = review_order([i.score for i in images], [i.map_peak for i in images], thresholds, body.n)
        listed = [
            {
                "index": index,
                "file": images[index].file,
                "reason": reason,
                "distance": distance,
                "score": images[index].score,
                "normalized_score": normalized_score(images[index].score, thresholds.image, scorer.normal_tail),
                "is_anomalous": images[index].score > thresholds.image,
            }
            for index, reason, distance in order
        ]
        return {"thresholds": thresholds._asdict(), "review": listed}

    @app.post("/predict", openapi_extra=upload_body)
    async def predict(request: Request, maps: Maps = "none") -> dict[str, Any]:
        """Score one image (multipart field ``file``, or the raw image as the body). ``maps=png``: the heatmap
        overlay and the defect mask as base64 PNGs at the image's size; ``maps=raw``: the anomaly map as float32."""
        [(name, read)] = await uploads(request, many=False)
        return await score(await read(), name, maps)

    @app.post("/predict/batch", openapi_extra=upload_body)
    async def predict_batch(request: Request, maps: Maps = "none") -> dict[str, Any]:
        """Score several images sent as multipart fields; a bad image gets an ``error`` entry, the rest are
        scored."""
        results = []
        for name, read in await uploads(request, many=True):
            try:
                results.append(await score(await read(), name, maps))
            except UploadError as err:
                results.append({"file": name, "error": str(err)})
        return {"results": results}

    return app


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host``:``port`` and listening; an address in use or unknown is a one-line BGADError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as err:
        raise BGADError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


def serve(scorer: Scorer, listener: socket.socket, host: str) -> None:
    """Run the server on ``listener`` (:func:`listening_socket`, bound to ``host``) until Ctrl-C."""
    _require_serving_packages()
    import uvicorn

    uvicorn.Server(uvicorn.Config(create_app(scorer, host=host), log_level="info")).run(sockets=[listener])
