"""Speaker tokens of the service: a client asks for a token (``POST /speakers``) and sends it
with each clip of that speaker (``POST /predict?speaker=<token>``); the speaker's statistics
accumulate from those clips (`stlser.adapt.RunningStats`) and, from the adaptation minimum on,
every answer is normalised with them.

A token is 128 random bits, bound to the client address that asked for it: another client
(another address, or a guessed token) gets the same "unknown speaker" answer as for a token that
never existed, so statistics are never shared between clients. Memory is bounded: at most
`per_client` tokens per address and `total` in all (the least recently used is dropped when a
new one is asked for), each three vectors of the model's functionals (about 100 KB for the
shipped model); a token unused for `idle_seconds` expires.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from stlser.adapt import RunningStats, SpeakerStats

#: Tokens one client address may hold at once (asking for one more drops its oldest).
PER_CLIENT = 8
#: Tokens held in all (asking for one more drops the least recently used).
TOTAL = 256
#: A token unused for this long expires (seconds).
IDLE_SECONDS = 3600.0


class UnknownSpeaker(KeyError):
    """No such token for this client (never created, expired, dropped, or another client's)."""


@dataclass
class _Entry:
    client: str
    stats: RunningStats
    used: float


class SpeakerTokens:
    """Thread-safe registry of speaker tokens (see the module docstring)."""

    def __init__(
        self,
        dim: int,
        sets: list[str],
        per_client: int = PER_CLIENT,
        total: int = TOTAL,
        idle_seconds: float = IDLE_SECONDS,
        clock: object = time.monotonic,
    ) -> None:
        self.dim, self.sets = int(dim), list(sets)
        self.per_client, self.total, self.idle = int(per_client), int(total), float(idle_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # least recently used first

    def _now(self) -> float:
        return float(self._clock())  # type: ignore[operator]

    def _expire(self, now: float) -> None:
        for token in [t for t, e in self._entries.items() if now - e.used > self.idle]:
            del self._entries[token]

    def create(self, client: str) -> str:
        """A new token for `client` (dropping its oldest, or the least recently used overall,
        when a bound is reached)."""
        with self._lock:
            now = self._now()
            self._expire(now)
            mine = [t for t, e in self._entries.items() if e.client == client]
            if len(mine) >= self.per_client:
                del self._entries[mine[0]]
            while len(self._entries) >= self.total:
                self._entries.popitem(last=False)
            token = secrets.token_urlsafe(16)
            self._entries[token] = _Entry(client, RunningStats(self.dim, self.sets, token), now)
            return token

    def _get(self, token: str, client: str) -> _Entry:
        now = self._now()
        self._expire(now)
        e = self._entries.get(token)
        if e is None or not secrets.compare_digest(e.client, client):
            raise UnknownSpeaker(token)
        e.used = now
        self._entries.move_to_end(token)
        return e

    def add(self, token: str, client: str, X: object, seconds: float) -> SpeakerStats:
        """Add one clip's functionals to the token's statistics; returns them as they are now."""
        with self._lock:
            e = self._get(token, client)
            e.stats.add(X, seconds)  # type: ignore[arg-type]
            return e.stats.stats()

    def check(self, token: str, client: str) -> None:
        """UnknownSpeaker unless `client` holds `token` (before any work on an upload)."""
        with self._lock:
            self._get(token, client)

    def delete(self, token: str, client: str) -> None:
        with self._lock:
            self._get(token, client)
            del self._entries[token]

    def __len__(self) -> int:
        return len(self._entries)
