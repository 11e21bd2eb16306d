"""The socket file of a ``unix_socket`` source: making, checking, replacing, removing.

The parent directory is created if missing (0700, plus read and search for the group or
others exactly when ``socket_mode`` gives them access); an existing one that others may
write is refused. A stale socket file (one nobody answers on) is replaced; anything else
at the path, or a socket a process is listening on, is a ``SourceError`` and is left
untouched. ``socket_mode`` is applied without a moment of wider permissions.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat

from agent.config import SocketSourceConfig
from agent.errors import SourceError
from agent.telemetry import fields

log = logging.getLogger(__name__)

MAX_PATH_BYTES = 107
#: A socket's receive buffer; the kernel may cap it lower.
RCVBUF_BYTES = 1024 * 1024


def open_socket(config: SocketSourceConfig) -> tuple[socket.socket, tuple[int, int]]:
    """Bind and (for streams) listen on ``config.path``; the socket file's identity."""
    path = config.path
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise SourceError(f"{path} is too long for a UNIX socket (at most {MAX_PATH_BYTES} bytes)")
    prepare_directory(os.path.dirname(os.path.abspath(path)), config.socket_mode)
    clear_stale_socket(path)
    kind = socket.SOCK_STREAM if config.mode == "stream" else socket.SOCK_DGRAM
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        # bind creates the file with the socket's own mode: the owner's bits only, for now.
        # (Where fchmod on a socket fails, the umask bounds the file's first mode instead.)
        with contextlib.suppress(OSError):
            os.fchmod(sock.fileno(), config.socket_mode & 0o700)
        sock.bind(path)
        st = os.stat(path)
        os.chmod(path, config.socket_mode)
        if kind == socket.SOCK_STREAM:
            sock.listen(max(128, config.max_connections))
        else:
            with contextlib.suppress(OSError):  # else the kernel's default buffer will do
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise SourceError(f"cannot listen on {path}: {exc.strerror or exc}") from exc
    return sock, (st.st_dev, st.st_ino)


def socket_directory_mode(socket_mode: int) -> int:
    """The mode of a directory created for the socket: whoever ``socket_mode`` lets use
    the socket (group, others) may reach it; the owner has everything."""
    mode = 0o700
    if socket_mode & 0o060:
        mode |= 0o050
    if socket_mode & 0o006:
        mode |= 0o005
    return mode


def prepare_directory(directory: str, socket_mode: int) -> None:
    if os.path.isdir(directory):
        mode = stat.S_IMODE(os.stat(directory).st_mode)
        if mode & 0o002:  # anyone could replace the socket file, or squat its path
            raise SourceError(f"{directory} is writable by others (mode {mode:04o}); chmod o-w it")
        return
    mode = socket_directory_mode(socket_mode)
    try:
        os.makedirs(directory, mode=mode)
        os.chmod(directory, mode)  # exactly this mode, whatever the umask
    except FileExistsError:
        if not os.path.isdir(directory):
            raise SourceError(f"{directory} exists and is not a directory") from None
    except OSError as exc:
        raise SourceError(f"cannot create the directory {directory}: {exc.strerror}") from exc
    else:
        log.info("Created the socket's directory", extra=fields(path=directory, mode=f"{mode:04o}"))


def clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else at ``path``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SourceError(f"cannot inspect {path}: {exc.strerror}") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise SourceError(f"{path} is {_describe(st.st_mode)}; refusing to replace it")
    if _is_listening(path):
        raise SourceError(f"another process is listening on {path}")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise SourceError(f"cannot remove the stale socket {path}: {exc.strerror}") from exc
    log.info("Replaced a stale socket file", extra=fields(path=path))


def _is_listening(path: str) -> bool:
    """Whether some process has a socket bound to ``path``, whatever its type."""
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_SEQPACKET):
        with socket.socket(socket.AF_UNIX, kind) as probe:
            probe.setblocking(False)
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                return False
            except BlockingIOError:  # its backlog is full: very much alive
                return True
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue  # a socket of another type: try the next
                raise SourceError(
                    f"cannot tell whether a process is listening on {path}: {exc.strerror}"
                ) from exc
            return True
    return True  # no type we know answers, yet something is bound there: leave it alone


def _describe(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "not a socket"


def remove_socket_file(path: str, bound: tuple[int, int] | None) -> None:
    """Remove the socket file, unless another process has put its own at the path since."""
    try:
        st = os.lstat(path)
        if bound == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass  # already gone
