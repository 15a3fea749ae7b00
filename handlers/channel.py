"""A one-way message pipe between the pod's processes: pickle protocol 5 with numpy buffers sent out of band.

A message is one ``writev`` of a small prefix (lengths), the pickle stream and each out-of-band buffer (a
contiguous numpy array's memory, never copied into the pickle), and is read straight into preallocated buffers
with ``readv``. The pipe is enlarged (``F_SETPIPE_SZ``) so a typical tensor fits without many wake-ups. One writer
at a time (``send`` holds a lock); one reader thread per pipe. Blocking I/O releases the GIL.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import struct
import threading
from typing import Any

_PREFIX = struct.Struct("<II")  # pickle stream length, number of out-of-band buffers
_LENGTH = struct.Struct("<Q")
_F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
_MAX_PARTS = 512  # under IOV_MAX


class ChannelClosed(EOFError):
    """The other end is gone."""


def _grow(fd: int) -> None:
    # Above /proc/sys/fs/pipe-max-size for this user: the default size still works.
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_BYTES)


class Channel:
    """One end of a pipe: ``send`` on the write end, ``recv`` on the read end."""

    def __init__(self, fd: int):
        self.fd = fd
        self._lock = threading.Lock()

    @staticmethod
    def pipe() -> tuple[Channel, Channel]:
        """(read end, write end) of a new, enlarged pipe."""
        read_fd, write_fd = os.pipe()
        _grow(write_fd)
        return Channel(read_fd), Channel(write_fd)

    def send(self, message: Any) -> None:
        """Write one message (thread-safe); raises ``ChannelClosed`` when the reader is gone."""
        buffers: list[pickle.PickleBuffer] = []
        stream = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
        views = [buffer.raw() for buffer in buffers]
        head = _PREFIX.pack(len(stream), len(views)) + b"".join(_LENGTH.pack(v.nbytes) for v in views)
        parts: list[memoryview] = [memoryview(head), memoryview(stream), *views]
        with self._lock:
            try:
                _write_all(self.fd, parts)
            except (BrokenPipeError, OSError) as e:
                raise ChannelClosed(str(e)) from e

    def recv(self) -> Any:
        """Read one message (one reader thread per channel); raises ``ChannelClosed`` at end of stream."""
        stream_length, count = _PREFIX.unpack(self._read(_PREFIX.size))
        table = self._read(_LENGTH.size * count)
        lengths = [_LENGTH.unpack_from(table, i * _LENGTH.size)[0] for i in range(count)]
        stream = self._read(stream_length)
        buffers = [self._read(length) for length in lengths]
        # S301: both ends are processes of this pod, forked from one parent; nothing else can open the pipe.
        return pickle.loads(stream, buffers=buffers)  # noqa: S301

    def _read(self, size: int) -> bytearray:
        data = bytearray(size)
        view = memoryview(data)
        done = 0
        while done < size:
            got = os.readv(self.fd, [view[done:]])
            if got == 0:
                raise ChannelClosed("end of stream")
            done += got
        return data

    def close(self) -> None:
        """Close this end."""
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _write_all(fd: int, parts: list[memoryview]) -> None:
    while parts:
        written = os.writev(fd, parts[:_MAX_PARTS])
        while parts and written >= parts[0].nbytes:
            written -= parts[0].nbytes
            parts.pop(0)
        if parts and written:
            parts[0] = parts[0][written:]
