"""How `stlser serve` runs uvicorn: the h11 protocol with a limit uvicorn lacks (a connection
must deliver each request's head in time, else 408 and close), a short keep-alive and a bound on
the size of a request's head. Slow *bodies* are the app's business (`stlser.service.app`)."""

from __future__ import annotations

from typing import Any

#: Seconds a connection may take to send a request's headers (uvicorn has no such limit).
HEADER_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection is kept open.
KEEP_ALIVE = 5.0
#: Largest request head (request line and headers) in bytes.
MAX_HEADER_BYTES = 16 * 1024


def server_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    header_timeout: float = HEADER_TIMEOUT,
    log_level: str = "info",
) -> Any:
    """The uvicorn configuration `serve` runs: the h11 protocol with a header timeout
    (`HeaderTimeoutProtocol`), a short keep-alive, and a bound on the request head's size."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=header_timeout_protocol(header_timeout),
        timeout_keep_alive=int(KEEP_ALIVE),
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )


def header_timeout_protocol(timeout: float = HEADER_TIMEOUT) -> type:
    """uvicorn's h11 protocol, plus a limit it lacks: a connection must deliver each request's
    line and headers within `timeout` seconds of connecting (or of the previous response),
    else it gets 408 and is closed. (Slow *bodies* are the app's: `_read_body`.)"""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    body = b'{"error": "request headers did not arrive in time"}'
    reply = (
        b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )

    class HeaderTimeoutProtocol(H11Protocol):
        header_timeout = float(timeout)

        def _arm(self) -> None:
            """The head of the next request is due within `header_timeout` seconds."""
            self._disarm()
            self._head_cycle = self.cycle  # a new cycle (a request began) disarms the timer
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

        def _disarm(self) -> None:
            timer = getattr(self, "_head_timer", None)
            if timer is not None:
                timer.cancel()
            self._head_timer = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not getattr(self, "_head_cycle", None):
                self._disarm()

        def on_response_complete(self) -> None:
            if not self.transport.is_closing():
                self._arm()  # before super(): it may begin a pipelined request (disarms)
            super().on_response_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _head_expired(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.cycle is not self._head_cycle:
                return
            if self.conn.our_state in (h11.IDLE, h11.DONE):  # nothing of ours in flight
                self.transport.write(reply)
            self.transport.close()

    return HeaderTimeoutProtocol
