"""Messages from a torture child to the harness: length-prefixed msgpack frames on a pipe.

A frame is written with one ``write()`` of at most ``PIPE_BUF`` bytes, which POSIX makes atomic
on a pipe: a child killed at any instant leaves whole frames behind, never half of one. The
reader still tolerates a torn tail (it is dropped), so a broken child cannot confuse the
harness.
"""

from __future__ import annotations

import os
import select
import signal
import struct
from typing import Any

import msgpack

__all__ = ["send", "FrameReader", "MAX_FRAME", "STACK_SIGNAL"]

#: The signal on which a child writes every thread's stack to its stderr (faulthandler, which
#: writes at once, even while the child's Python code is blocked in a C call): how the harness
#: shows where a writer that stalled waits (sqlitesaver/torture/writers.py, stack_of).
STACK_SIGNAL = signal.SIGUSR1

#: The largest frame that one write() delivers atomically on a pipe (POSIX: at least 512;
#: 4096 on Linux).
MAX_FRAME = getattr(select, "PIPE_BUF", 512)
_HEADER = struct.Struct(">I")


def send(fd: int, message: dict[str, Any]) -> None:
    """Write ``message`` as one atomic frame; raise ValueError if it cannot be atomic."""
    body = msgpack.packb(message, use_bin_type=True)
    frame = _HEADER.pack(len(body)) + body
    if len(frame) > MAX_FRAME:
        raise ValueError(f"message of {len(frame)} bytes exceeds PIPE_BUF ({MAX_FRAME}); "
                         "it could be torn by a kill")
    written = os.write(fd, frame)
    if written != len(frame):  # cannot happen on a blocking pipe for <= PIPE_BUF bytes
        raise OSError(f"short write on the harness pipe ({written} of {len(frame)} bytes)")


class FrameReader:
    """Reassembles frames from the bytes read off a pipe, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add bytes; return the messages completed by them."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            end = _HEADER.size + size
            if len(self._buffer) < end:
                break
            messages.append(msgpack.unpackb(bytes(self._buffer[_HEADER.size:end]), raw=False))
            del self._buffer[:end]
        return messages

    @property
    def torn_bytes(self) -> int:
        """Bytes of an incomplete frame left at the end (only ever non-zero after a kill)."""
        return len(self._buffer)
