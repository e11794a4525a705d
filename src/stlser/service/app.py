"""FastAPI app: emotion probabilities for an uploaded clip, segments for long audio, a web page.

The body is read from memory with a hard size limit (the read stops as soon as the limit is
passed), the audio header is checked for duration before any decoding, and the content is judged
only by decoding it (never by file name or content type). Nothing the client sends becomes a
server path and no file is written: uploads are parsed and decoded in memory. Every error is JSON
``{"error": "<plain message>"}`` with a 4xx status (5xx only for a bug in the server).

Why this is one module: the endpoints and the limits they enforce on what a client sends are
read together; how uvicorn itself runs is `stlser.service.server`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from stlser import __version__
from stlser import audio as audio_mod
from stlser.adapt import MIN_CLIPS, MIN_SECONDS, NOT_ADAPTABLE
from stlser.safety import ModelRunError
from stlser.service.server import server_config
from stlser.service.speakers import SpeakerTokens, UnknownSpeaker
from stlser.service.uploads import (
    MIN_RATE_GRACE,
    ApiError,
    _audio_from_request,
    _check_header,
    _plain,
)

log = logging.getLogger("stlser.service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: Inferences run at once; more requests wait (bounds memory and CPU on a small machine).
MAX_CONCURRENT = 2
#: Uploads being received or processed at once; one more gets 503 with Retry-After.
MAX_UPLOADS = 4
#: Seconds a client may take to send its whole body (slow uploads hold memory).
READ_TIMEOUT = 30.0
#: Lowest average transfer rate of a body (bytes/s), enforced after MIN_RATE_GRACE seconds:
#: an upload trickling in below it is cut off with 408 (it would hold an upload slot).
MIN_RATE = 8 * 1024
#: Uploads one client (IP address) may have in flight at once; one more gets 429.
MAX_UPLOADS_PER_CLIENT = 2
#: Audio per forward pass: longer uploads to /predict are decoded block by block, classified
#: in equal windows of at most this length (probabilities averaged by length); /segments
#: batches at most this much audio. A request's memory: about `--max-mb` plus one window's pass.
WINDOW_SECONDS = 20.0
#: The answer for a speaker token this client does not hold.
UNKNOWN_SPEAKER = (
    "unknown speaker token (expired, dropped, or not this client's): ask POST /speakers for one"
)
SR = audio_mod.SAMPLE_RATE
#: Longest error message sent back (long reasons are cut).
MAX_ERROR_CHARS = 300
#: Host names accepted by default: loopback only (add real names with `allowed_hosts`).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")

#: Headers added to every response (no sniffing, no framing, page assets from this origin only).
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; media-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
}


#: Upper bounds of the service's options (beyond them a typo is more likely than intent).
MAX_MB_LIMIT = 4096.0
MAX_SECONDS_LIMIT = 24 * 3600.0


class UsageError(ValueError):
    """An invalid service option; the message names the command-line flag (exit code 2)."""


def _number(flag: str, value: Any, low: float, high: float, integer: bool = False) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise UsageError(f"{flag} must be a finite number, got {value!r}")
    if integer and x != int(x):
        raise UsageError(f"{flag} must be a whole number, got {value!r}")
    if not low <= x <= high:
        raise UsageError(f"{flag} must be between {low:g} and {high:g}, got {value!r}")
    return x


def check_options(
    max_mb: Any = 20.0,
    max_seconds: Any = 600.0,
    max_uploads: Any = None,
    read_timeout: Any = None,
    port: Any = None,
    host: Any = None,
) -> None:
    """Validate the service options before any work (model loading, binding a port); an
    invalid one raises UsageError naming its flag: NaN, inf, zero, negative or absurd values
    (`--max-mb`, `--max-seconds`, `--max-uploads`, `--read-timeout`), a port outside
    1..65535, a host that is not a string. None skips a check."""
    _number("--max-mb", max_mb, 1e-6, MAX_MB_LIMIT)
    _number("--max-seconds", max_seconds, audio_mod.MIN_SECONDS, MAX_SECONDS_LIMIT)
    if max_uploads is not None:
        _number("--max-uploads", max_uploads, 1, 10_000, integer=True)
    if read_timeout is not None:
        _number("--read-timeout", read_timeout, 0.001, 24 * 3600.0)
    if port is not None:
        _number("--port", port, 1, 65_535, integer=True)
    if host is not None and not isinstance(host, str):
        raise UsageError(f"--host must be a host name or address, got {host!r}")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _host_name(host: str) -> str:
    """`Host`/origin authority → lower-case host name without port ("[::1]:80" → "::1")."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _origin_ok(origin: str, request_host: str, scheme: str, allowed: set[str]) -> bool:
    """Same origin as the request (scheme://Host), or listed in `allowed` ("*": any)."""
    o = origin.strip().lower().rstrip("/")
    return "*" in allowed or o in allowed or o == f"{scheme}://{request_host.strip().lower()}"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg")))
    return "invalid request: " + ("; ".join(parts) or "validation failed")


def _load_recognizer(model: Any) -> Any:
    """A path loads a `stlser.inference.Recognizer`; anything else is taken as a recognizer."""
    if model is None or isinstance(model, (str, Path)):
        from stlser.inference import Recognizer
        from stlser.recognizer import describe_model, resolve_model_path

        rec = Recognizer.load(model)  # None or "base": the general model shipped in the package
        log.info("%s", describe_model(model, resolve_model_path(model)))
        return rec
    for attr in ("labels", "predict", "segments"):
        if not hasattr(model, attr):
            raise TypeError(
                f"model must be a path or a recognizer; {type(model).__name__} has no {attr!r}"
            )
    return model


def create_app(
    model: Any,
    max_mb: float = 20.0,
    max_seconds: float = 600.0,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] | None = None,
    max_uploads: int = MAX_UPLOADS,
    read_timeout: float = READ_TIMEOUT,
    max_uploads_per_client: int = MAX_UPLOADS_PER_CLIENT,
    min_rate: float = MIN_RATE,
    rate_grace: float = MIN_RATE_GRACE,
) -> FastAPI:
    """Build the service around a model artefact path (loaded once, here) or a recognizer object.

    `max_mb` bounds the upload size, `max_seconds` the audio duration (read from the header,
    before decoding, with the decoding budget of `stlser.audio.check_limits`). Requests whose
    `Host` is not in `allowed_hosts` (default: loopback names; "*" allows any) get 400; POSTs
    with an `Origin` other than the service's own or one in `allowed_origins` get 403. At most
    `max_uploads` uploads are received/processed at once (then 503 with Retry-After), at most
    `max_uploads_per_client` from one client IP address (then 429); a body must arrive within
    `read_timeout` seconds and, after `rate_grace` seconds, at `min_rate` bytes/s on average
    (else 408). Invalid options raise UsageError naming the flag.
    """
    check_options(max_mb, max_seconds, max_uploads, read_timeout)
    _number("max_uploads_per_client", max_uploads_per_client, 1, 10_000, integer=True)
    _number("min_rate", min_rate, 0, 1e12)
    _number("rate_grace", rate_grace, 0, 24 * 3600.0)
    per_client: dict[str, int] = {}
    hosts = {_host_name(h) for h in (allowed_hosts or LOOPBACK_HOSTS)}
    origins = {o.strip().lower().rstrip("/") for o in (allowed_origins or ())}
    in_flight = {"n": 0}
    rec = _load_recognizer(model)
    max_bytes = int(max_mb * 1024 * 1024)
    labels = [str(x) for x in rec.labels]
    slots = asyncio.Semaphore(MAX_CONCURRENT)
    adaptable = bool(getattr(rec, "adaptable", False))
    speakers = SpeakerTokens(rec.functionals_dim, rec.functional_sets or []) if adaptable else None

    app = FastAPI(
        title="stlser",
        version=__version__,
        description="Speech emotion recognition (CNN-BiLSTM-STL)",
        docs_url=None,
        redoc_url=None,
    )  # those pages load a CDN
    app.state.recognizer = rec
    app.state.max_bytes = max_bytes
    app.state.max_seconds = float(max_seconds)

    # ------------------------------------------------------------------ errors → {"error"}
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        retry = {"Retry-After": "2"} if exc.status in (429, 503) else None
        return _error(exc.status, exc.message, headers=retry)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404:
            msg = "not found"
        elif exc.status_code == 405:
            msg = "method not allowed"
        return _error(exc.status_code, msg, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(exc))

    @app.exception_handler(Exception)
    async def _internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error: %s", exc)
        return _error(500, "internal server error")

    @app.middleware("http")
    async def _security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        host = request.headers.get("host", "")
        if "*" not in hosts and _host_name(host) not in hosts:
            response = _error(400, "host not allowed (see `stlser serve --allow-host`)")
        elif (
            request.method not in ("GET", "HEAD", "OPTIONS")
            and "origin" in request.headers
            and not _origin_ok(request.headers["origin"], host, request.url.scheme, origins)
        ):
            response = _error(
                403, "cross-origin request refused (see `stlser serve --allow-origin`)"
            )
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _infer(fn: Any, data: bytes) -> Any:
        """Header check, decoding and inference in a worker thread, `MAX_CONCURRENT` at once."""

        def work() -> tuple[float, Any]:
            duration = _check_header(data, max_seconds)
            return duration, fn(data)

        async with slots:
            try:
                return await run_in_threadpool(work)
            except audio_mod.AudioTooLarge as e:
                raise ApiError(413, _plain(e.reason)) from None
            except audio_mod.AudioError as e:
                raise ApiError(422, _plain(e.reason)) from None
            except ModelRunError as e:
                log.error("model failed at run time: %s", e)
                raise ApiError(500, f"the model failed on this input: {e.problem}") from None

    def _client(request: Request) -> str:
        return request.client.host if request.client else "?"

    async def _upload(request: Request, fn: Any) -> tuple[float, Any]:
        """One upload, end to end, if fewer than `max_uploads` are in flight (else 503)."""
        client = _client(request)
        if per_client.get(client, 0) >= max_uploads_per_client:
            raise ApiError(
                429, f"too many uploads in progress from {client} (limit {max_uploads_per_client})"
            )
        if in_flight["n"] >= max_uploads:
            raise ApiError(503, "busy: too many uploads in progress, retry shortly")
        in_flight["n"] += 1
        per_client[client] = per_client.get(client, 0) + 1
        try:
            data = await _audio_from_request(request, max_bytes, read_timeout, min_rate, rate_grace)
            return await _infer(fn, data)
        finally:
            in_flight["n"] -= 1
            per_client[client] -= 1
            if not per_client[client]:
                del per_client[client]

    def _predict(data: bytes) -> Any:
        from stlser.recognizer import BaseRecognizer

        if isinstance(rec, BaseRecognizer) and audio_mod.info(data).duration > WINDOW_SECONDS:
            # long audio: decoded block by block, one window's forward pass at a time
            return rec.predict_windows(data, window=WINDOW_SECONDS, max_seconds=max_seconds)
        wave = audio_mod.load(data, max_seconds=max_seconds)  # blockwise, bounded
        return rec.predict(wave, sample_rate=audio_mod.SAMPLE_RATE)

    def _predict_speaker(data: bytes, token: str, client: str) -> tuple[Any, Any]:
        """One clip of a token's speaker: its functionals join the speaker's statistics, then
        the clip is answered with them (global statistics below the adaptation minimum)."""
        if audio_mod.info(data).duration > WINDOW_SECONDS:
            raise ApiError(
                413,
                f"a clip sent with a speaker token may last at most {WINDOW_SECONDS:g} s "
                "(one utterance); send long recordings to /segments",
            )
        wave = audio_mod.load(data, max_seconds=max_seconds)
        assert speakers is not None
        try:
            stats = speakers.add(token, client, rec._functionals_of([wave]), len(wave) / SR)
        except UnknownSpeaker:
            raise ApiError(404, UNKNOWN_SPEAKER) from None
        who = rec.adapt(stats) if stats.usable else rec
        return who.predict(wave, sample_rate=SR), stats

    def _speakers_or_400() -> SpeakerTokens:
        if speakers is None:
            raise ApiError(400, NOT_ADAPTABLE)
        return speakers

    def _segments(data: bytes, max_window: float) -> Any:
        from stlser.recognizer import BaseRecognizer

        if isinstance(rec, BaseRecognizer):
            batch = max(1, int(WINDOW_SECONDS // max_window))  # <= WINDOW_SECONDS per pass
            return rec.segments(
                data, max_window=max_window, max_seconds=max_seconds, batch_size=batch
            )
        return rec.segments(data, max_window=max_window)

    # ---------------------------------------------------------------------------- routes
    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness plus what the page needs: labels, version and the limits."""
        return {
            "status": "ok",
            "version": __version__,
            "labels": labels,
            "sample_rate": int(getattr(rec, "sample_rate", audio_mod.SAMPLE_RATE)),
            "max_mb": float(max_mb),
            "max_seconds": float(max_seconds),
            "adaptable": adaptable,
        }

    @app.get("/labels")
    async def get_labels() -> dict[str, Any]:
        return {"labels": labels}

    @app.post("/predict")
    async def predict(
        request: Request,
        speaker: str | None = Query(
            None, min_length=1, max_length=64, description="a token from POST /speakers"
        ),
    ) -> dict[str, Any]:
        """One clip → label and class probabilities (multipart field `file` or raw body); with
        `speaker`, adapted to that speaker's clips so far (see POST /speakers)."""
        if speaker is None:
            duration, pred = await _upload(request, _predict)
            out = dict(pred.to_dict())
            out.setdefault("duration", duration)
            return out
        tokens, client = _speakers_or_400(), _client(request)
        try:
            tokens.check(speaker, client)  # before the upload is read
        except UnknownSpeaker:
            raise ApiError(404, UNKNOWN_SPEAKER) from None
        fn = functools.partial(_predict_speaker, token=speaker, client=client)
        duration, (pred, stats) = await _upload(request, fn)
        out = dict(pred.to_dict())
        out.setdefault("duration", duration)
        out["speaker"] = {
            "clips": stats.clips,
            "seconds": round(stats.seconds, 3),
            "adapted": stats.usable,
            "note": stats.why_not(),
        }
        return out

    @app.post("/speakers")
    async def new_speaker(request: Request) -> dict[str, Any]:
        """A token for one speaker's clips: send it with each of them (`/predict?speaker=`)."""
        tokens = _speakers_or_400()
        return {
            "speaker": tokens.create(_client(request)),
            "min_clips": MIN_CLIPS,
            "min_seconds": MIN_SECONDS,
            "idle_seconds": tokens.idle,
        }

    @app.delete("/speakers/{token}")
    async def drop_speaker(token: str, request: Request) -> dict[str, Any]:
        """Forget a speaker's statistics now (they also expire when unused)."""
        try:
            _speakers_or_400().delete(token, _client(request))
        except UnknownSpeaker:
            raise ApiError(404, UNKNOWN_SPEAKER) from None
        return {"deleted": True}

    @app.post("/segments")
    async def segments(
        request: Request,
        max_window: float = Query(6.0, gt=0.5, le=60.0, description="longest segment, seconds"),
    ) -> dict[str, Any]:
        """Long audio → a list of segments with start, end, label and probabilities."""
        duration, segs = await _upload(request, functools.partial(_segments, max_window=max_window))
        return {"duration": duration, "labels": labels, "segments": [s.to_dict() for s in segs]}

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def serve(
    model: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_mb: float = 20.0,
    max_seconds: float = 600.0,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] | None = None,
    max_uploads: int = MAX_UPLOADS,
    read_timeout: float = READ_TIMEOUT,
    max_uploads_per_client: int = MAX_UPLOADS_PER_CLIENT,
) -> None:
    """Load the model once and run the service with uvicorn until interrupted.

    Accepted Host names: loopback, the bind address (unless a wildcard) and `allowed_hosts`.
    Invalid options raise UsageError (a ValueError naming the flag) before anything starts."""
    import uvicorn

    check_options(max_mb, max_seconds, max_uploads, read_timeout, port, host)

    hosts = list(LOOPBACK_HOSTS) + list(allowed_hosts or [])
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    elif not allowed_hosts:
        print(
            "stlser service: listening on all interfaces but accepting only loopback Host names; "
            "add the names clients use with --allow-host",
            file=sys.stderr,
        )
    app = create_app(
        model,
        max_mb=max_mb,
        max_seconds=max_seconds,
        allowed_hosts=hosts,
        allowed_origins=allowed_origins,
        max_uploads=max_uploads,
        read_timeout=read_timeout,
        max_uploads_per_client=max_uploads_per_client,
    )
    print(
        f"stlser service: http://{host}:{port}/  (labels: {', '.join(app.state.recognizer.labels)})"
    )
    uvicorn.Server(server_config(app, host, port)).run()
