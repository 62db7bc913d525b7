"""The web app of ``qvimclap serve``: a JSON API over :mod:`qvimclap.api` and :mod:`qvimclap.generation`, and
the static page (``qvimclap/serve/static``) that calls it. No CDN, no build step: it works offline.

Routes (``/docs`` shows them with their parameters; ``/openapi.json`` is the schema):

- ``GET /`` the page; ``GET /static/...`` its files.
- ``GET /api/health`` version, limits, whether generation is available (and if not, how to enable it).
- ``GET /api/indexes`` the loaded indexes.
- ``POST /api/search?index=NAME&k=5`` multipart field ``audio`` -> ``{"hits": [{"rank", "score", "id",
  "path", "audio_url"}]}``; the first four are what ``qvimclap search --json`` prints.
- ``GET /api/audio/{index}/{id}`` the source file of an item of a loaded index (nothing else is served).
- ``POST /api/generate?duration_s=&steps=&seed=&guidance=&text=&text_weight=`` multipart ``audio`` -> a
  queued job; ``GET /api/jobs/{id}`` its progress; ``GET /api/jobs/{id}/audio`` the WAV.

Errors are JSON ``{"detail": "one line"}`` with a 4xx status (401 token, 404 unknown index/item/job, 413 too
large or too long, 422 unusable input, 429 generation queue full, 503 generation not configured).
Every ``/api`` route but ``/api/health`` needs the token when the server was started with one, as
``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (audio players cannot send headers).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from qvimclap.errors import MissingDependencyError, QvimclapError, StoreError

try:  # the optional web extra; this module is imported only by `qvimclap serve`
    from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
except ImportError:
    raise MissingDependencyError(
        'qvimclap serve needs its web extra: pip install -e ".[serve]" (fastapi, fastapi-offline, uvicorn, '
        "python-multipart)"
    ) from None
from qvimclap.serve.jobs import GenerationQueue, QueueFullError
from qvimclap.serve.library import Limits, LoadedIndex, UploadError, UploadFolder, load_indexes, search

logger = logging.getLogger(__name__)

ENABLE_GENERATION_HINT = (
    "generation is off: start the server with --audioldm DIR (a diffusers AudioLDM folder, e.g. a local copy "
    "of cvssp/audioldm-s-full-v2) and --model RUN (an aligned model folder)"
)


@dataclass
class ServeState:
    """Everything the app serves, loaded once: indexes with their query encoders, the upload folder, and
    the generation queue (None when AudioLDM is not configured)."""

    indexes: dict[str, LoadedIndex]
    uploads: UploadFolder
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    generation: GenerationQueue | None = None
    generation_hint: str = ENABLE_GENERATION_HINT

    def close(self) -> None:
        if self.generation is not None:
            self.generation.close()
        self.uploads.close()


def load_state(
    index_paths: Sequence[str | Path],
    *,
    model: str | None = None,
    audioldm: str | Path | None = None,
    token: str | None = None,
    work_dir: str | Path | None = None,
    limits: Limits = Limits(),
) -> ServeState:
    """Load indexes, encoders and (with ``audioldm``) AudioLDM once. Generation conditions on ``model``, or on
    the first index's query encoder when no model is given; it must embed into AudioLDM's 512-d space."""
    from qvimclap.generation import CONDITION_DIM, GenerationError, load_audioldm

    indexes = load_indexes(index_paths, model=model)
    generation = None
    if audioldm is not None:
        condition_model = next(iter(indexes.values())).embedder
        if condition_model.embedding_dim != CONDITION_DIM:
            raise GenerationError(
                f"--audioldm needs a {CONDITION_DIM}-d CLAP-space --model (an aligned model folder); the "
                f"query encoder gives {condition_model.embedding_dim}-d embeddings"
            )
        generation = GenerationQueue(
            load_audioldm(audioldm), condition_model, max_pending=limits.max_pending_jobs
        )
    return ServeState(indexes, UploadFolder(work_dir), limits, token, generation)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(state: ServeState) -> Any:
    """The FastAPI application over ``state`` (docs bundled, so ``/docs`` works offline too)."""
    from qvimclap import __version__

    app = FastAPIOffline(
        title="qvimclap",
        version=__version__,
        description="Search sound libraries by vocal imitation, and generate sound from it.",
        static_url="/static-docs",
    )
    app.state.serve = state
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.limits.max_upload_bytes + 64 * 1024)

    @app.exception_handler(QvimclapError)
    async def _user_error(request: Any, err: QvimclapError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=_status_of(err))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Any, err: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(err.errors())}, status_code=422)

    app.include_router(_api_router(state))
    static = resources.files("qvimclap.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(str(static / "index.html"), headers={"Cache-Control": "no-cache"})

    return app


def _api_router(state: ServeState) -> Any:
    def check_token(request: Request) -> None:
        if state.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else request.query_params.get("token", "")
        if not hmac.compare_digest(given.encode(), state.token.encode()):
            raise HttpError("this server needs its token: send 'Authorization: Bearer TOKEN' or ?token=", 401)

    router = APIRouter(prefix="/api")
    guarded = APIRouter(dependencies=[Depends(check_token)])

    @router.get("/health")
    def health() -> dict[str, Any]:
        """Liveness, version, request limits and whether generation is available."""
        from qvimclap import __version__

        return {
            "status": "ok",
            "version": __version__,
            "num_indexes": len(state.indexes),
            "token_required": state.token is not None,
            "limits": state.limits.to_dict(),
            "generation": {
                "available": state.generation is not None,
                "hint": None if state.generation is not None else state.generation_hint,
            },
        }

    @guarded.get("/indexes")
    def indexes() -> dict[str, Any]:
        """The loaded indexes (name, size, space, query encoder); the first is the default."""
        return {"indexes": [library.describe() for library in state.indexes.values()]}

    @guarded.post("/search")
    def search_audio(
        audio: UploadFile = File(..., description="The vocal imitation: any audio file libsndfile reads."),
        k: int = Query(5, ge=1, description="Number of results."),
        index: str | None = Query(None, description="Index name (GET /api/indexes); default: the first."),
    ) -> dict[str, Any]:
        """The ``k`` nearest items of an index to an uploaded imitation, as ``qvimclap search --json``."""
        library = _library(state, index)
        if k > state.limits.max_k:
            raise HttpError(f"k {k} is above this server's limit of {state.limits.max_k}", 422)
        with state.uploads.saved(audio.file, audio.filename, state.limits) as path:
            hits = search(library, path, k)
        return {"index": library.name, "k": k, "hits": [_with_audio_url(h, library) for h in hits]}

    @guarded.get("/audio/{index}/{item_id:path}")
    def item_audio(index: str, item_id: str) -> FileResponse:
        """The source file of item ``item_id`` of a loaded index; only files an index names are served."""
        try:
            path = _library(state, index).item_path(item_id)
        except StoreError as err:
            raise HttpError(str(err), 404) from None
        return FileResponse(str(path), filename=path.name, content_disposition_type="inline")

    @guarded.post("/generate", status_code=202)
    def generate_audio(
        audio: UploadFile = File(..., description="The vocal imitation."),
        duration_s: float = Query(5.0, gt=0, description="Seconds (rounded up to AudioLDM's 40 ms steps)."),
        steps: int = Query(50, ge=1, description="Denoising steps."),
        seed: int = Query(0, ge=0, description="Seed of the noise."),
        guidance: float = Query(2.5, ge=0, description="Classifier-free guidance scale."),
        text: str | None = Query(None, description="Also condition on this text."),
        text_weight: float = Query(0.5, ge=0, le=1, description="Weight of the text in the blend."),
    ) -> dict[str, Any]:
        """Queue a generation from an imitation; poll ``GET /api/jobs/{id}`` for its progress."""
        from qvimclap.audio import load_audio
        from qvimclap.generation import GenerationConfig

        queue = state.generation
        if queue is None:
            raise HttpError(state.generation_hint, 503)
        limits = state.limits
        if duration_s > limits.max_generate_s or steps > limits.max_generate_steps:
            raise HttpError(
                f"this server generates at most {limits.max_generate_s:g} s with at most "
                f"{limits.max_generate_steps} steps; got {duration_s:g} s, {steps} steps",
                422,
            )
        config = GenerationConfig(duration_s=duration_s, num_steps=steps, seed=seed, guidance_scale=guidance)
        text = text.strip() if text and text.strip() else None
        if text is not None and queue.audioldm.text_encoder is None:
            raise HttpError(f"{queue.audioldm.source} has no text encoder, so text cannot be blended in", 422)
        with state.uploads.saved(audio.file, audio.filename, limits) as path:
            waveform = load_audio(path, queue.model.sample_rate)
        job = queue.submit(waveform, queue.model.sample_rate, config, text=text, text_weight=text_weight)
        return _job_status(queue, job.id)

    @guarded.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        """Where a generation job stands: status, queue position, denoising step."""
        if state.generation is None:
            raise HttpError(state.generation_hint, 503)
        return _job_status(state.generation, job_id)

    @guarded.get("/jobs/{job_id}/audio")
    def job_audio(job_id: str) -> Response:
        """The generated sound of a finished job (16 kHz WAV)."""
        if state.generation is None:
            raise HttpError(state.generation_hint, 503)
        found = state.generation.get(job_id)
        if found is None or found[0].wav is None:
            raise HttpError(f"no finished generation {job_id!r}", 404)
        headers = {"Content-Disposition": f'inline; filename="qvimclap-{job_id}.wav"'}
        return Response(found[0].wav, media_type="audio/wav", headers=headers)

    router.include_router(guarded)
    return router


class HttpError(QvimclapError):
    """A user error with the HTTP status it answers with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _status_of(err: QvimclapError) -> int:
    if isinstance(err, (HttpError, UploadError)):
        return err.status
    if isinstance(err, QueueFullError):
        return 429
    return 422


def _library(state: ServeState, name: str | None) -> LoadedIndex:
    if name is None:
        return next(iter(state.indexes.values()))
    if name not in state.indexes:
        raise HttpError(f"no index named {name!r}; this server has {', '.join(state.indexes)}", 404)
    return state.indexes[name]


def _with_audio_url(hit: dict[str, Any], library: LoadedIndex) -> dict[str, Any]:
    """The hit plus the URL of its sound (clients with a token append ``?token=``)."""
    from urllib.parse import quote

    return {**hit, "audio_url": f"/api/audio/{quote(library.name)}/{quote(hit['id'])}"}


def _job_status(queue: GenerationQueue, job_id: str) -> dict[str, Any]:
    found = queue.get(job_id)
    if found is None:
        raise HttpError(f"no generation job {job_id!r} (finished jobs are kept for a while only)", 404)
    job, position = found
    status = job.to_dict(position)
    status["audio_url"] = f"/api/jobs/{job.id}/audio" if job.status == "done" else None
    return status


def _one_line(errors: Sequence[Any]) -> str:
    """FastAPI's validation errors as one line: ``k: Input should be greater than or equal to 1``."""
    parts = []
    for error in errors:
        where = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
        parts.append(f"{'.'.join(where) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class BodyLimitMiddleware:
    """Refuse a request body over ``max_bytes`` with 413 before it is parsed: by its Content-Length, or while
    it streams in when it has none (pure ASGI, so it sees the bytes as they arrive)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        import json

        body = json.dumps({"detail": f"request larger than this server's limit of {self.max_bytes} bytes"})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})


class _BodyTooLarge(Exception):
    pass
