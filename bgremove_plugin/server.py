"""``bgremove serve``: cut-outs over HTTP, for programs in any language (the ``[server]`` extra).

``POST /v1/remove`` takes the photo as a multipart field ``image`` or as the raw body with an ``image/*``
content type; query options mirror :func:`bgremove_plugin.remove_background`. ``GET /v1/health`` says
which weights and device serve. The model is loaded once, before the server listens; requests run on a
pool of ``workers`` threads with at most ``queue`` more waiting, and anything beyond that is answered at
once with 503 and ``Retry-After`` instead of growing a backlog. Bad input is a JSON error with a 4xx.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations at run time,
# and they name Query and Request, which are imported inside create_app so that the package imports
# without the extra.

import argparse
import asyncio
import io
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from . import __version__
from .errors import BackendUnavailableError, BgRemoveError, InvalidArgumentError, InvalidImageError
from .precision import PRECISIONS

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .api import BackgroundRemover

log = logging.getLogger(__name__)

OutputFormat = Literal["png", "webp", "jpeg"]
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}
OPTIONS = frozenset({"background", "mask", "threshold", "refine", "decontaminate", "format"})
_INSTALL_HINT = 'pip install "bgremove_plugin[server]"'


@dataclass(frozen=True)
class ServerLimits:
    """What one server accepts and holds. The pixel and byte limits are the demo's."""

    max_pixels: int = 40_000_000
    max_bytes: int = 30 * 2**20
    workers: int = 2
    """Requests processed at the same time (threads sharing the one loaded model)."""
    queue: int = 8
    """Requests allowed to wait for a worker; more are refused with 503."""
    retry_after: int = 2
    """Seconds a refused client is told to wait."""


class _Refused(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


class _Admission:
    """Counts the requests being processed or waiting; refuses one that would exceed the capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.taken = 0
        self._lock = threading.Lock()

    def enter(self) -> bool:
        with self._lock:
            if self.taken >= self.capacity:
                return False
            self.taken += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.taken -= 1


def _check_size(pixels: int, limits: ServerLimits) -> None:
    if pixels > limits.max_pixels:
        raise _Refused(
            413, f"the photo has {pixels / 1e6:.1f} megapixels; this server takes at most {limits.max_pixels / 1e6:.1f}"
        )


def _decode(data: bytes, limits: ServerLimits) -> Any:
    """The photo in ``data``, refused before decoding its pixels when it is over the pixel limit."""
    from PIL import Image, UnidentifiedImageError

    from .api import load_image

    if not data:
        raise _Refused(400, "the request holds no image: send it as the multipart field 'image' or as the body")
    try:
        with Image.open(io.BytesIO(data)) as header:
            _check_size(header.width * header.height, limits)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise _Refused(400, f"the {len(data)} bytes sent are not a readable image: {exc}") from exc
    return load_image(data)


def create_app(remover: "BackgroundRemover", *, limits: ServerLimits = ServerLimits(), weights: str = "default",
               revision: str | None = None) -> "FastAPI":
    """The ASGI application around one loaded ``remover``; run it with any ASGI server."""
    try:
        from fastapi import FastAPI, Query, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse, Response
    except ImportError as exc:  # pragma: no cover - the extra is part of the test install
        raise BackendUnavailableError(f"bgremove serve needs FastAPI and uvicorn; {_INSTALL_HINT}") from exc

    app = FastAPI(
        title="bgremove", version=__version__,
        description="Remove the background from photos of people. POST a photo to /v1/remove.",
    )
    pool = ThreadPoolExecutor(max_workers=limits.workers, thread_name_prefix="bgremove")
    admission = _Admission(limits.workers + limits.queue)

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def malformed_option(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in exc.errors())
        return error(422, f"malformed option: {problems}")

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug, not bad input
        log.exception("request failed")
        return error(500, f"internal error: {type(exc).__name__}")

    @app.get("/v1/health")
    async def health() -> dict[str, object]:
        return {
            "status": "ok", "version": __version__, "weights": weights, "revision": revision,
            "device": str(remover.device), "backend": remover.backend, "provider": remover.provider,
            "precision": remover.precision, "workers": limits.workers,
            "queue": limits.queue, "max_pixels": limits.max_pixels, "max_bytes": limits.max_bytes,
        }

    @app.post(
        "/v1/remove",
        responses={200: {"content": {t: {} for t in CONTENT_TYPES.values()}, "description": "the cut-out"}},
        response_class=Response,
    )
    async def remove(
        request: Request,
        background: Annotated[str | None, Query(description="colour name or hex code; omit for transparency")] = None,
        mask: Annotated[bool, Query(description="return the 8-bit alpha mask only")] = False,
        threshold: Annotated[float | None, Query(gt=0.0, lt=1.0, description="hard edges at this probability")] = None,
        refine: Annotated[Literal["guided", "none", "matting"], Query(description="edge refinement")] = "guided",
        decontaminate: Annotated[bool, Query(description="remove the old background's tint at soft edges")] = False,
        format: Annotated[OutputFormat, Query(description="png, webp, or jpeg (jpeg needs a background or mask)")] = "png",
    ) -> Response:
        unknown = sorted(set(request.query_params) - OPTIONS)
        if unknown:
            return error(422, f"unknown option {', '.join(unknown)}; the options are {', '.join(sorted(OPTIONS))}")
        if format == "jpeg" and background is None and not mask:
            return error(422, "JPEG has no transparency: add background=COLOUR (e.g. white) or use png or webp")
        if not admission.enter():
            return error(503, "every worker is busy and the queue is full; retry later",
                         {"Retry-After": str(limits.retry_after)})
        try:
            data = await _read_image(request, limits)
            options = {"background": background, "return_mask": mask, "threshold": threshold,
                       "refine": refine, "decontaminate": decontaminate}
            body = await asyncio.get_running_loop().run_in_executor(pool, _cut_out, remover, data, limits, options, format)
        except _Refused as refused:
            return error(refused.status, str(refused), refused.headers)
        except InvalidArgumentError as exc:
            return error(422, str(exc))
        except (InvalidImageError, BgRemoveError) as exc:
            return error(400, str(exc))
        finally:
            admission.leave()
        return Response(body, media_type=CONTENT_TYPES[format])

    app.router.on_shutdown.append(lambda: pool.shutdown(wait=False))
    return app


async def _read_image(request: Any, limits: ServerLimits) -> bytes:
    """The photo's bytes from a multipart field ``image`` or a raw ``image/*`` body, within the byte limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes + 64 * 1024:
        raise _Refused(413, f"the request is {int(declared):,} bytes; this server takes photos of at most {limits.max_bytes:,}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=0, max_part_size=limits.max_bytes)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            raise _Refused(400, "the multipart request has no file field 'image'")
        data: bytes = await upload.read()
    elif content_type.startswith("image/") or content_type == "application/octet-stream":
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_bytes:
                raise _Refused(413, f"the photo is over this server's limit of {limits.max_bytes:,} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
    else:
        raise _Refused(415, f"content type {content_type or 'none'!r}: send multipart/form-data with a field 'image', "
                            "or the photo itself with its image/* type")
    if len(data) > limits.max_bytes:
        raise _Refused(413, f"the photo is {len(data):,} bytes; this server takes at most {limits.max_bytes:,}")
    return data


def _cut_out(remover: "BackgroundRemover", data: bytes, limits: ServerLimits, options: dict[str, Any],
             output: OutputFormat) -> bytes:
    image = _decode(data, limits)
    result = remover.remove(image, **options)
    buffer = io.BytesIO()
    result.save(buffer, format=output.upper())
    return buffer.getvalue()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise InvalidArgumentError(f"${name}={value!r} must be a whole number") from exc


def serve_main(argv: Sequence[str] | None = None) -> int:
    """``bgremove serve``: load the model, then serve until interrupted. Flags win over environment variables."""
    limits = ServerLimits()
    parser = argparse.ArgumentParser(prog="bgremove serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("BGREMOVE_HOST", "127.0.0.1"), help="default: $BGREMOVE_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=_env_int("BGREMOVE_PORT", 8000), help="default: $BGREMOVE_PORT or 8000")
    parser.add_argument("--workers", type=int, default=_env_int("BGREMOVE_WORKERS", limits.workers),
                        help="requests processed at once (default: $BGREMOVE_WORKERS or %(default)s)")
    parser.add_argument("--queue", type=int, default=_env_int("BGREMOVE_QUEUE", limits.queue),
                        help="requests allowed to wait; more get 503 (default: $BGREMOVE_QUEUE or %(default)s)")
    parser.add_argument("--max-pixels", type=int, default=_env_int("BGREMOVE_MAX_PIXELS", limits.max_pixels))
    parser.add_argument("--max-bytes", type=int, default=_env_int("BGREMOVE_MAX_BYTES", limits.max_bytes))
    parser.add_argument("--model", default=os.environ.get("BGREMOVE_MODEL"), help="weights folder or Hub id (default: built in)")
    parser.add_argument("--revision", default=None)
    parser.add_argument("--device", default=os.environ.get("BGREMOVE_DEVICE", "auto"))
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "onnx"])
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS))
    args = parser.parse_args(argv)
    if args.workers < 1 or args.queue < 0:
        parser.error("--workers must be at least 1 and --queue at least 0")
    try:
        import uvicorn
    except ImportError as exc:
        raise BackendUnavailableError(f"bgremove serve needs uvicorn; {_INSTALL_HINT}") from exc
    from .api import BackgroundRemover

    remover = BackgroundRemover(
        args.model, revision=args.revision, device=args.device, backend=args.backend, precision=args.precision
    )
    limits = ServerLimits(max_pixels=args.max_pixels, max_bytes=args.max_bytes, workers=args.workers, queue=args.queue)
    app = create_app(remover, limits=limits, weights=args.model or "default", revision=args.revision)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
