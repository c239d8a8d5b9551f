"""Reading files that gpunn did not just write itself: checkpoints, caches, data.

Every such file is untrusted input.  Whatever path it comes from, it must be a
*regular file* before a single byte is read: a FIFO blocks the first ``read`` forever
(opening one for reading blocks too, until a writer appears), and a character device
such as ``/dev/zero`` reads without end.  And no read may take more memory than the
caller expects: :func:`read_regular` reads at most ``limit`` bytes and refuses a file
that holds more.

The errors are :class:`OSError` subclasses whose ``strerror`` says what is wrong in
words, so a caller that already turns an unreadable file into one line (``cannot read
X (…)``) or, in a cache, into "build it again" handles these too.
"""
from __future__ import annotations

import errno
import os
import stat

_PIECE = 1 << 24  # read_regular reads at most this much at a time

__all__ = ["NotRegularFile", "TooLarge", "kind_of", "open_regular", "read_regular"]


class NotRegularFile(OSError):
    """The path names a FIFO, a device, a socket or a folder, not a regular file."""


class TooLarge(OSError):
    """The file holds more bytes than the caller allows."""


def kind_of(mode: int) -> str:
    """What a ``st_mode`` is, in words ("a FIFO", "a character device", ...)."""
    for test, name in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path, *, follow_links: bool = True):
    """Open ``path`` for reading in binary mode, only if it is a regular file.

    The file is opened with ``O_NONBLOCK`` (so opening a FIFO returns at once instead of
    waiting for a writer), checked with ``fstat`` on the open descriptor (no race between
    a check and the open), and only then switched back to blocking reads.  With
    ``follow_links=False`` a symbolic link at ``path`` itself is refused (``O_NOFOLLOW``):
    for caches, where nobody but gpunn should have put anything.

    Raises :class:`NotRegularFile` for anything but a regular file, and the usual
    ``OSError`` (``FileNotFoundError``, ``PermissionError``, ...) when it cannot be opened."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise NotRegularFile(errno.ELOOP, "a symbolic link, not a regular file", str(path)) from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO opened non-blocking for writing
            raise NotRegularFile(errno.ENXIO, "not a regular file", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = kind_of(st.st_mode)
            raise NotRegularFile(errno.EINVAL, f"{what}, not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path, limit: int | None = None, *, follow_links: bool = True) -> bytes:
    """The bytes of the regular file ``path``; at most ``limit`` of them.

    A file with more than ``limit`` bytes raises :class:`TooLarge` after reading at most
    ``limit + 1`` bytes (a file may grow while it is read, so its size is not trusted)."""
    with open_regular(path, follow_links=follow_links) as f:
        if limit is None:
            return f.read()
        # In pieces, not f.read(limit + 1): that would reserve limit + 1 bytes for any file.
        data = bytearray()
        while len(data) <= limit and (piece := f.read(min(_PIECE, limit + 1 - len(data)))):
            data += piece
    if len(data) > limit:
        raise TooLarge(errno.EFBIG, f"larger than the {limit:,} bytes allowed", str(path))
    return bytes(data)
