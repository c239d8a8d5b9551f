"""Writing output files (checkpoints, metrics, profiles, plots) without harming what is there.

Every file gpunn writes goes through :func:`atomic_write`, which picks the way to write
by what the path names:

* a **regular file or a new path**: a temporary file ``.NAME.<pid>.<random>.tmp`` in the
  same folder, flushed, fsynced and renamed over ``NAME``, so a crash mid-write leaves
  the previous file intact.  A new file gets the user's umask (like ``open(path, "w")``);
  a replaced file keeps its permission bits (and owner, where the writer may set it).
  Temporary files that a killed writer left beside ``NAME`` are removed by the next write
  of ``NAME`` (only those whose process is gone, so two writers never trip each other);
* a **symbolic link**: the same, at the file the link points to; the link stays a link;
* a **FIFO or character device** (``/dev/null``, ``/dev/stdout``, a named pipe): the
  bytes are written straight into it; it is never renamed over or truncated away;
* anything else (a block device, a socket, a folder): refused in one line.

gpunn's own cache files (compiled kernels, measured peaks) go through :func:`write_cache_file`
instead: a path in a cache is gpunn's, never the user's, so nothing at it is followed or
written into. The new file is always a regular file the writer created (``O_EXCL``, which
also refuses to open through a link), renamed over whatever is at the path: a planted link
is replaced, its target left alone.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import os
import re
import secrets
import stat

from gpunn.errors import GpunnError, OutputError


def _folder(path: str) -> str:
    return os.path.dirname(path) or "."


def resolve(path) -> tuple[str, bool]:
    """``(where to write, direct)``: the file a chain of symbolic links ends at, and whether
    it must be written in place because the chain passes through ``/proc`` (``/dev/stdout``,
    ``/dev/fd/N``: there the link names an open file, not a place to rename into)."""
    p = os.path.abspath(os.fspath(path))
    for _ in range(40):  # the kernel's own limit on links followed
        folder = os.path.realpath(_folder(p))
        p = os.path.join(folder, os.path.basename(p))
        if folder == "/proc" or folder.startswith("/proc/"):
            return p, True
        if not os.path.islink(p):
            return p, False
        p = os.path.join(folder, os.readlink(p))
    raise GpunnError(f"cannot write {path}: too many levels of symbolic links")


def _kind(mode) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


#: the most digits of a process id (Linux's pid_max is at most 2**22), and of the random part,
#: in a temporary file's name
PID_DIGITS, TOKEN_DIGITS = 7, 8


def _tmp_name(name, pid, token):
    return f".{name}.{pid}.{token}.tmp"


def _check_name_length(path, target):
    """The temporary file beside ``target`` is longer than its name: a name that fits the folder's
    limit (NAME_MAX, 255 bytes on most file systems) may still fail at the first write."""
    folder, name = _folder(target), os.path.basename(target)
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if not limit or limit < 0:
        return
    longest = len(os.fsencode(_tmp_name(name, "9" * PID_DIGITS, "0" * TOKEN_DIGITS)))
    if longest > limit:
        extra = longest - len(os.fsencode(name))
        raise GpunnError(f"cannot write {path}: its name is {len(os.fsencode(name))} bytes long; gpunn writes it "
                         f"through a temporary file beside it {extra} bytes longer ({_tmp_name('NAME', '<pid>', '<random>')}), "
                         f"and this folder allows {limit}: use a name of at most {limit - extra} bytes")


def check_writable(*paths):
    """Fail (GpunnError, a usage error) before any work when an output path cannot be
    written: a missing or read-only folder, a folder, block device or socket where the
    file should be, a device or FIFO without write permission, a name too long for the
    temporary file it is written through.  ``None`` entries are skipped."""
    for path in paths:
        if path is None:
            continue
        target, direct = resolve(path)
        try:
            st = os.stat(target)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise GpunnError(f"cannot write {path}: {exc.strerror}") from None
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise GpunnError(f"{path} is a folder; give a file name to write")
        if st is not None and not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode) \
                and not stat.S_ISCHR(st.st_mode):
            raise GpunnError(f"cannot write {path}: it is {_kind(st.st_mode)}; gpunn writes regular files, "
                              "FIFOs and character devices")
        if direct or (st is not None and not stat.S_ISREG(st.st_mode)):
            if not os.access(target, os.W_OK):
                raise GpunnError(f"cannot write {path}: permission denied")
            continue
        parent = _folder(target)
        linked = target != os.path.abspath(path)
        shown = f"{parent} (where {path} points)" if linked else _folder(os.fspath(path))
        if not os.path.isdir(parent):
            raise GpunnError(f"cannot write {path}: folder {shown} does not exist")
        if not os.access(parent, os.W_OK):
            raise GpunnError(f"cannot write {path}: folder {shown} is not writable")
        _check_name_length(path, target)


def _replaced_file(path):
    """The file writing ``path`` replaces, or None where it writes into a FIFO or device
    (which several outputs may share: ``--json /dev/null --csv /dev/null``)."""
    target, direct = resolve(path)
    if direct:
        return None
    try:
        st = os.stat(target)
    except OSError:
        return target
    return target if stat.S_ISREG(st.st_mode) else None


def check_outputs(outputs, inputs=None, in_place=()):
    """:func:`check_writable` for each of a command's ``outputs`` ({option: path}, None skipped),
    and that no two of them name the same file, and none names a file in ``inputs``
    ({option: path}) that the command reads first: the second write would replace what the
    first wrote, or what the command read.  ``in_place`` lists the (input option, output
    option) pairs that may name one file: a run continued in place (``--resume X --save X``).
    Paths are compared where they lead: links followed, ``./`` and ``../`` resolved."""
    outputs = {k: v for k, v in outputs.items() if v is not None}
    check_writable(*outputs.values())
    inputs = {k: v for k, v in (inputs or {}).items() if v is not None}
    owner = {}  # file -> (option, path) that reads or writes it
    for option, path in [*inputs.items(), *outputs.items()]:
        target = _replaced_file(path)
        if target is None:
            continue
        if target not in owner:
            owner[target] = option, path
            continue
        other, other_path = owner[target]
        if (other, option) in in_place:
            continue
        if other in inputs:
            raise GpunnError(f"{option} {path} would replace {other_path}, which {other} reads: "
                             f"give {option} another path")
        raise GpunnError(f"{other} {other_path} and {option} {path} name the same file: give each output its own path")


def atomic_write(path, write):
    """Call ``write(fileobj)`` to produce ``path``'s new content, written as the module
    docstring says.  Failures (a full disk, say) raise OutputError naming ``path``."""
    check_writable(path)
    target, direct = resolve(path)
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    try:
        if direct or (st is not None and not stat.S_ISREG(st.st_mode)):
            _write_in_place(target, write)
        else:
            _replace(target, st, write)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _write_in_place(target, write):
    """A FIFO or device: build the bytes in memory (a writer may seek), then write them once.
    Appended, not truncated: ``--json /dev/stdout > out.txt`` keeps what was printed before."""
    buf = io.BytesIO()
    write(buf)
    with open(os.open(target, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)), "wb") as f:
        f.write(buf.getbuffer())


def _tmp_pattern(name):
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.)?[A-Za-z0-9_]+\.tmp$")


def remove_stale_temporaries(target):
    """Delete ``.NAME.*.tmp`` files beside ``target`` that a killed writer left behind: those
    whose process is gone (and those of older gpunn versions, which carry no process id)."""
    folder, name = _folder(target), os.path.basename(target)
    pattern = _tmp_pattern(name)
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(f".{name}.") + "*.tmp")):
        match = pattern.match(os.path.basename(tmp))
        if not match:
            continue
        pid = match.group(1)
        if pid is not None and (int(pid) == os.getpid() or _alive(int(pid))):
            continue  # another writer (or thread) is at work on it
        try:
            if stat.S_ISREG(os.lstat(tmp).st_mode):
                os.unlink(tmp)
        except OSError:
            pass


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _replace(target, st, write):
    """A regular file or a new path: temporary file beside it, fsync, rename."""
    remove_stale_temporaries(target)
    folder, name = _folder(target), os.path.basename(target)
    for _ in range(100):
        tmp = os.path.join(folder, _tmp_name(name, os.getpid(), secrets.token_hex(TOKEN_DIGITS // 2)))
        try:  # 0o666 less the umask, as open() would create it
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise OSError(errno.EEXIST, "no free temporary file name")
    try:
        if st is not None:  # replacing a file: keep its permissions (and owner, if we may)
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                try:
                    os.fchown(fd, st.st_uid, st.st_gid)
                except OSError:
                    pass
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_cache_file(path, data: bytes):
    """Write one of gpunn's own cache files whole or not at all, never through a link or into a
    FIFO or device at ``path`` (see the module docstring). Raises OSError."""
    _replace(os.path.abspath(os.fspath(path)), None, lambda f: f.write(data))


def write_bytes(path, data: bytes):
    atomic_write(path, lambda f: f.write(data))


def write_text(path, text: str):
    write_bytes(path, text.encode())


def write_json(path, obj, default=None):
    """Write ``obj`` as JSON to ``path`` (metrics files, like checkpoints, are never half-written);
    ``default`` as ``json.dumps`` takes it (``str``: anything else written as its text)."""
    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


__all__ = ["atomic_write", "check_outputs", "check_writable", "remove_stale_temporaries", "resolve", "write_bytes", "write_cache_file", "write_json",
           "write_text"]
