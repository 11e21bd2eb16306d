"""The state directory: the checks at start, the one-agent lock, and opening files in it.

- ``check_state_dir`` creates ``state_dir`` (0700) if missing and refuses one that is not
  a directory, belongs to another user, or that the group or others can write (a
  ``ConfigError`` at ``state_dir``: exit 2). It refuses a symbolic link, or anything but
  a regular file, where the spool's SQLite files go, and creates ``spool.db`` 0600
  itself, so SQLite never opens a file through a link.
- ``StateDirLock`` is ``state_dir/lock``: an exclusive ``flock`` held for the life of the
  process that owns the spool (``tailhook run``, or a ``dead-letter replay`` when no agent
  runs), with that process's id written in it. A second taker gets ``StateDirInUse``
  naming the holder. The kernel drops the lock when the holder dies, however it dies.
- ``open_dir`` and ``open_file`` open what lies below ``state_dir`` without following a
  symbolic link in any component under it (each directory is opened with
  ``O_NOFOLLOW`` relative to its parent, the file likewise), and ``open_file`` refuses
  anything but a regular file with one link (a FIFO would block, a hard link would
  write elsewhere). The ``state_dir`` path itself is the operator's: it may be a link.
  A refusal is a ``StateError`` saying which path and why; a missing file is the
  ``FileNotFoundError`` of ``os.open``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from agent.errors import ConfigError, Problem, StateDirInUse, StateError

LOCK_NAME = "lock"
SPOOL_FILES = ("spool.db", "spool.db-wal", "spool.db-shm")
#: How long a taker waits for a new holder to write its process id into the lock file.
PID_WAIT = 1.0
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def check_state_dir(path: Path) -> None:
    """Create ``state_dir`` if missing; refuse one that others could tamper with."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as exc:
        raise _refused(path, f"cannot be created: {exc.strerror or exc}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise _refused(path, "is not a directory")
    if st.st_uid != os.geteuid():
        raise _refused(path, f"belongs to user {st.st_uid}, not to this user ({os.geteuid()})")
    if st.st_mode & 0o022:
        mode = stat.S_IMODE(st.st_mode)
        raise _refused(path, f"is writable by group or others (mode {mode:04o}); chmod go-w it")
    if not os.access(path, os.W_OK | os.X_OK):
        raise _refused(path, "cannot be written by this user")
    dir_fd = _open_base(path)
    try:
        for name in SPOOL_FILES:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                raise _refused(path / name, f"is {_describe(st.st_mode)}, not a regular file")
        os.close(_open_in(dir_fd, path, "spool.db", os.O_RDWR | os.O_CREAT, 0o600))
    except StateError as exc:
        raise ConfigError([Problem("state_dir", str(exc))]) from exc
    except OSError as exc:
        raise _refused(path, f"cannot create spool.db: {exc.strerror or exc}") from exc
    finally:
        os.close(dir_fd)


def _refused(path: Path, why: str) -> ConfigError:
    return ConfigError([Problem("state_dir", f"{path} {why}")])


# -- opening files -------------------------------------------------------------------


@contextlib.contextmanager
def open_dir(state_dir: Path, *parts: str, create: bool = False) -> Iterator[int]:
    """The directory ``state_dir/parts...`` as a file descriptor (closed on exit), each
    component below ``state_dir`` opened without following a link; missing ones are
    created 0700 when ``create``."""
    fd = _open_base(state_dir)
    where = state_dir
    try:
        for part in parts:
            where = where / part
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _translate(exc, fd, part, where) from exc
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def open_file(state_dir: Path, *parts: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``state_dir/parts...`` (``O_NOFOLLOW`` added), never through a link
    below ``state_dir``; with ``O_CREAT`` the directories on the way are created 0700.
    Anything but a regular file with one link is refused."""
    *dirs, name = parts
    with open_dir(state_dir, *dirs, create=bool(flags & os.O_CREAT)) as dir_fd:
        return _open_in(dir_fd, state_dir.joinpath(*dirs), name, flags, mode)


def _open_in(dir_fd: int, directory: Path, name: str, flags: int, mode: int) -> int:
    path = directory / name
    try:
        # O_NONBLOCK: opening a FIFO planted here must not block; it is refused below.
        fd = os.open(
            name, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode, dir_fd=dir_fd
        )
    except OSError as exc:
        raise _translate(exc, dir_fd, name, path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} is {_describe(st.st_mode)}, not a regular file; refusing it")
        if st.st_nlink > 1:
            raise StateError(f"{path} has {st.st_nlink} hard links; refusing to write through it")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_base(state_dir: Path) -> int:
    try:
        return os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise StateError(f"state_dir {state_dir} is not a directory") from exc
        raise


def _translate(exc: OSError, dir_fd: int, name: str, path: Path) -> OSError | StateError:
    """A refusal (a link where none may be) as StateError; other errors as they are."""
    if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
        return exc
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return exc
    if stat.S_ISLNK(st.st_mode):
        return StateError(f"{path} is a symbolic link; refusing to follow it")
    return StateError(f"{path} is {_describe(st.st_mode)}; refusing it")


def _describe(mode: int) -> str:
    kinds = {
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFDIR: "a directory",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
        stat.S_IFREG: "a regular file",
    }
    return kinds.get(stat.S_IFMT(mode), "not a regular file")


# -- the lock -------------------------------------------------------------------------


class StateDirLock:
    """``state_dir/lock``, held exclusively (``flock``) until ``release``."""

    def __init__(self, state_dir: Path, fd: int) -> None:
        self.state_dir = state_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateDirLock:
        """Take the lock and write this process's id in it; ``StateDirInUse`` if taken."""
        try:
            fd = open_file(state_dir, LOCK_NAME, flags=os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise StateError(f"cannot open {state_dir / LOCK_NAME}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise StateDirInUse(state_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:
            os.close(fd)
            raise StateError(f"cannot write {state_dir / LOCK_NAME}: {exc.strerror}") from exc
        return cls(state_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let go (closing the file drops the ``flock``); the file stays for the next one."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def _holder(fd: int) -> int | None:
    """The process id written in the lock file; a new holder may not have written it
    yet, so wait for it a little. None if it never appears."""
    deadline = time.monotonic() + PID_WAIT
    while True:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        if text.isdigit():
            return int(text)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


# -- small files written whole ------------------------------------------------------


def write_file_atomically(state_dir: Path, *parts: str, data: bytes) -> None:
    """Write ``state_dir/parts...`` (0600) so that a reader sees all of it or nothing:
    under a temporary name first, then renamed over it."""
    *dirs, name = parts
    temporary = f".{name}.tmp"
    with open_dir(state_dir, *dirs, create=True) as dir_fd:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=dir_fd)  # left by a crash
        where = state_dir.joinpath(*dirs)
        fd = _open_in(dir_fd, where, temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def read_small_file(state_dir: Path, *parts: str, limit: int) -> bytes:
    """The first ``limit`` bytes of ``state_dir/parts...``, never through a link."""
    fd = open_file(state_dir, *parts, flags=os.O_RDONLY)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)
