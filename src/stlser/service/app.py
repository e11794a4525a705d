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
import re
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
from starlette.requests import ClientDisconnect

from stlser import __version__
from stlser import audio as audio_mod
from stlser.safety import ModelRunError
from stlser.service.server import server_config

log = logging.getLogger("stlser.service")

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: The multipart field that must hold the audio.
FIELD = "file"
#: Bytes allowed on top of the audio limit for multipart boundaries and part headers.
MULTIPART_SLACK = 16 * 1024
#: Inferences run at once; more requests wait (bounds memory and CPU on a small machine).
MAX_CONCURRENT = 2
#: Uploads being received or processed at once; one more gets 503 with Retry-After.
MAX_UPLOADS = 4
#: Seconds a client may take to send its whole body (slow uploads hold memory).
READ_TIMEOUT = 30.0
#: Lowest average transfer rate of a body (bytes/s), enforced after MIN_RATE_GRACE seconds:
#: an upload trickling in below it is cut off with 408 (it would hold an upload slot).
MIN_RATE = 8 * 1024
MIN_RATE_GRACE = 3.0
#: Uploads one client (IP address) may have in flight at once; one more gets 429.
MAX_UPLOADS_PER_CLIENT = 2
#: Audio per forward pass: longer uploads to /predict are decoded block by block, classified
#: in equal windows of at most this length (probabilities averaged by length); /segments
#: batches at most this much audio. A request's memory: about `--max-mb` plus one window's pass.
WINDOW_SECONDS = 20.0
#: Multipart parts accepted in one upload (the audio plus a few form fields).
MAX_PARTS = 8
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


class ApiError(Exception):
    """An error for the client: HTTP status and a plain message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _plain(reason: str) -> str:
    """An AudioError reason without libsndfile's "Error opening <_io.BytesIO object at 0x…>: "."""
    return re.sub(r"Error opening <[^>]*>: ?", "", reason).strip()


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


async def _read_body(
    request: Request,
    limit: int,
    timeout: float | None = None,
    min_rate: float = 0.0,
    grace: float = MIN_RATE_GRACE,
) -> bytes:
    """Read the request body into memory, stopping (413) as soon as it passes `limit` bytes,
    (408) when the whole body has not arrived within `timeout` seconds, and (408) as soon as
    the average rate falls below `min_rate` bytes/s after `grace` seconds: each wait for the
    next chunk has a deadline (the time by which the bytes so far would be too few), so a
    client that sends one byte a second, or nothing, is cut off without waiting for `timeout`.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(
                    413, f"upload too large: {int(declared)} bytes > limit {limit} bytes"
                )
        except ValueError:
            raise ApiError(400, "invalid Content-Length header") from None
    buf = bytearray()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stream = request.stream().__aiter__()
    try:
        async with asyncio.timeout(timeout):
            while True:
                wait = None
                if min_rate > 0:  # the next byte is due when len(buf) + 1 = rate x (t - grace)
                    wait = max(0.0, grace + (len(buf) + 1) / min_rate - (loop.time() - t0))
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), wait)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise ApiError(
                        408,
                        f"upload too slow: below {min_rate / 1024:g} kB/s after {grace:g} s "
                        f"({len(buf)} bytes in {loop.time() - t0:.1f} s)",
                    ) from None
                buf.extend(chunk)
                if len(buf) > limit:
                    raise ApiError(413, f"upload too large: more than the limit of {limit} bytes")
    except ClientDisconnect:
        raise ApiError(400, "the client disconnected before the upload was complete") from None
    except TimeoutError:
        raise ApiError(
            408, f"upload too slow: the body did not arrive within {timeout:g} s"
        ) from None
    return bytes(buf)


def _parse_multipart(
    body: bytes, content_type: str, max_parts: int = MAX_PARTS
) -> tuple[dict[str, bytes], list[str]]:
    """Parse a multipart/form-data body in memory → ({field name: data}, names in order).

    More than `max_parts` parts → 400 as soon as the next one begins (a body of many tiny parts
    costs time per part); only the data of the first part of each name is kept."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "multipart upload without a boundary")
    parts: dict[str, bytes] = {}
    names: list[str] = []
    state: dict[str, Any] = {"hname": b"", "hval": b"", "disp": None, "data": bytearray()}

    def on_part_begin() -> None:
        if len(names) >= max_parts:
            raise ApiError(400, f"too many parts in the multipart upload (limit {max_parts})")
        state.update(disp=None, data=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        if state["hname"].lower() == b"content-disposition":
            state["disp"] = state["hval"]
        state.update(hname=b"", hval=b"")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["data"] is not None:
            state["data"].extend(data[start:end])

    def on_header_end_name() -> None:  # drop the data of names already seen or not wanted
        _, opts = parse_options_header(state["disp"] or b"")
        state["name"] = opts.get(b"name", b"").decode("utf-8", "replace")
        if state["name"] in parts or state["name"] != FIELD:
            state["data"] = None

    def on_part_end() -> None:
        if "name" not in state:
            on_header_end_name()
        name = state.pop("name")
        names.append(name)
        if state["data"] is not None:
            parts.setdefault(name, bytes(state["data"]))

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_header_end_name,
    }
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except FormParserError:
        raise ApiError(400, "malformed multipart upload") from None
    return parts, names


async def _audio_from_request(
    request: Request,
    max_bytes: int,
    timeout: float | None = None,
    min_rate: float = 0.0,
    grace: float = MIN_RATE_GRACE,
) -> bytes:
    """The uploaded audio bytes: multipart field `file`, or the raw body for any other type.
    Multipart bodies are parsed in a worker thread (never on the event loop)."""
    ctype = request.headers.get("content-type", "")
    multipart = ctype.lower().startswith("multipart/form-data")
    body = await _read_body(
        request, max_bytes + (MULTIPART_SLACK if multipart else 0), timeout, min_rate, grace
    )
    if not body:
        raise ApiError(
            400, f"empty request: send audio as the raw body or as multipart field '{FIELD}'"
        )
    if not multipart:
        return body
    parts, names = await run_in_threadpool(_parse_multipart, body, ctype)
    if FIELD not in parts:
        shown = [repr(n[:40]) for n in names[:5]]
        got = ", ".join(shown) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        got = got or "none"
        raise ApiError(
            400, f"multipart upload must put the audio in the field '{FIELD}' (got: {got})"
        )
    data = parts[FIELD]
    if not data:
        raise ApiError(400, f"the '{FIELD}' field is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ApiError(413, f"upload too large: {len(data)} bytes > limit {max_bytes} bytes")
    return data


def _check_header(data: bytes, max_seconds: float) -> float:
    """Read the audio header (no full decode); reject unreadable audio, too low a sample rate
    and audio too long or too costly to decode (`stlser.audio.check_limits`); → seconds."""
    try:
        meta = audio_mod.info(data)
    except audio_mod.AudioError as e:
        raise ApiError(422, _plain(e.reason)) from None
    if meta.sample_rate <= 0 or meta.frames <= 0:
        raise ApiError(422, "no audio samples (the header declares 0 frames)")
    try:
        audio_mod.check_limits(meta, "<upload>", max_seconds)
    except audio_mod.AudioTooLarge as e:
        raise ApiError(413, e.reason) from None
    except audio_mod.AudioError as e:
        raise ApiError(422, e.reason) from None
    return meta.duration


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

    async def _upload(request: Request, fn: Any) -> tuple[float, Any]:
        """One upload, end to end, if fewer than `max_uploads` are in flight (else 503)."""
        client = request.client.host if request.client else "?"
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
        }

    @app.get("/labels")
    async def get_labels() -> dict[str, Any]:
        return {"labels": labels}

    @app.post("/predict")
    async def predict(request: Request) -> dict[str, Any]:
        """One clip → label and class probabilities (multipart field `file` or raw body)."""
        duration, pred = await _upload(request, _predict)
        out = dict(pred.to_dict())
        out.setdefault("duration", duration)
        return out

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
