"""WAV (RIFF, RIFX, RF64) header checks that libsndfile does not make: a file cut short.

libsndfile silently reads the frames that are present when a WAV is cut short, so a file cut
in half would pass as a shorter clip; :func:`truncation` compares the `data` chunk's declared
size with the bytes that follow it (`stlser.audio` calls it before decoding).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO

#: Sizes a streaming writer leaves in the header when it does not know the final length.
_UNKNOWN_SIZES = (0, 0xFFFFFFFF)


def truncation(fh: BinaryIO) -> str | None:
    """Return why a RIFF/RF64 WAV stream is truncated, or None (also for any other format).

    libsndfile silently reads the frames that are present when a WAV is cut short, so a file cut
    in half would pass as a shorter clip. The `data` chunk's declared size (from ds64 for RF64)
    is compared with the bytes that follow it. Unknown sizes (0 or 0xFFFFFFFF, written by
    streaming recorders) are accepted. The stream position is restored.
    """
    try:
        if not fh.seekable():
            return None
        base = fh.tell()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        end = fh.seek(0, os.SEEK_END)
        fh.seek(base)
        head = fh.read(12)
        if len(head) < 12 or head[8:12] != b"WAVE" or head[:4] not in (b"RIFF", b"RIFX", b"RF64"):
            return None
        order = ">" if head[:4] == b"RIFX" else "<"
        pos, ds64_data = base + 12, None
        for _ in range(10_000):  # chunk walk; a sane WAV has a handful of chunks
            fh.seek(pos)
            chunk = fh.read(8)
            if len(chunk) < 8:
                return None  # no data chunk: let libsndfile report what is wrong
            cid, (size,) = chunk[:4], struct.unpack(order + "I", chunk[4:])
            if cid == b"ds64":
                body = fh.read(16)
                if len(body) == 16:
                    (ds64_data,) = struct.unpack("<Q", body[8:16])
            elif cid == b"data":
                declared = size
                if head[:4] == b"RF64" and size == 0xFFFFFFFF and ds64_data is not None:
                    declared = ds64_data
                if declared in _UNKNOWN_SIZES:
                    return None
                held = end - (pos + 8)
                if held < declared:
                    return (
                        f"truncated: header declares {declared} bytes of audio data, "
                        f"the file holds {max(held, 0)}"
                    )
                return None
            pos += 8 + size + (size & 1)
        return None
    finally:
        fh.seek(base)
