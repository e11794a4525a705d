"""What a client uploads, read and checked before any decoding: the body in memory under a hard
size limit, time limit and minimum rate; multipart parsing in memory; the audio header's
duration and cost (`stlser.service.app` uses these for every upload)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from stlser import audio as audio_mod

#: The multipart field that must hold the audio.
FIELD = "file"
#: Bytes allowed on top of the audio limit for multipart boundaries and part headers.
MULTIPART_SLACK = 16 * 1024
#: Multipart parts accepted in one upload (the audio plus a few form fields).
MAX_PARTS = 8
#: Seconds before the minimum transfer rate is enforced (`stlser.service.app.MIN_RATE`).
MIN_RATE_GRACE = 3.0


class ApiError(Exception):
    """An error for the client: HTTP status and a plain message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _plain(reason: str) -> str:
    """An AudioError reason without libsndfile's "Error opening <_io.BytesIO object at 0x…>: "."""
    return re.sub(r"Error opening <[^>]*>: ?", "", reason).strip()


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
