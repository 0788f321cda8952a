"""The grader's only way into a worker's directory: through a descriptor it opened itself, never by path.

The worker's directory belongs to the worker's user, so anything in it may be a link, a FIFO, a
device, a huge file or a hard link to somebody else's file by the time the grader looks. A
``WorkerDir`` is opened (``O_DIRECTORY | O_NOFOLLOW``) right after the grader made the directory,
before any worker runs: renaming the directory or replacing a folder above it changes nothing for
the grader afterwards. Through it the grader

- creates files only with ``O_CREAT | O_EXCL | O_NOFOLLOW`` (never through a link, never over
  someone else's file) and only before the worker starts, or in ``answers/``, a folder of its own;
- reads files only with ``O_NOFOLLOW | O_NONBLOCK`` (a FIFO cannot block it), only regular files
  with a single link (``fstat`` after the open), and never more than a bound it names.
"""

from __future__ import annotations

import os
import stat

from autograder.worker import protocol

READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
ANSWERS = protocol.ANSWERS  # the grader's folder inside the worker's: stand-in answers (the worker reads them)


class UnsafeFile(OSError):
    """A file the grader refuses to read: not a regular file, linked elsewhere, or larger than allowed."""


def _read_fd(fd: int, cap: int) -> bytes:
    """Everything in an opened regular file, at most ``cap`` bytes (``UnsafeFile`` beyond)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafeFile("not a regular file")
    if info.st_nlink != 1:  # a hard link to a file elsewhere: its content is not the worker's to give
        raise UnsafeFile("a file with other names (a hard link)")
    if info.st_size > cap:
        raise UnsafeFile(f"larger than {cap} bytes")
    chunks, total = [], 0
    while chunk := os.read(fd, min(1 << 20, cap + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:  # it grew after the fstat
            raise UnsafeFile(f"larger than {cap} bytes")
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` into ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class WorkerDir:
    """A worker's directory, held open by the grader (see the module's docstring)."""

    def __init__(self, path: os.PathLike | str):
        self.path = os.fspath(path)
        self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.answers_fd: int | None = None

    def create(self, name: str, data: bytes, mode: int = 0o600) -> None:
        """A new file ``name`` with ``data`` (fails if anything, a link included, is already there)."""
        fd = os.open(name, CREATE_FLAGS, mode, dir_fd=self.fd)
        try:
            os.fchmod(fd, mode)  # the umask must not decide who reads it
            _write_all(fd, data)
        finally:
            os.close(fd)

    def read(self, name: str, cap: int) -> bytes:
        """The content of regular file ``name``, at most ``cap`` bytes; ``OSError`` (``UnsafeFile``) else."""
        fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
        try:
            return _read_fd(fd, cap)
        finally:
            os.close(fd)

    def open_for_reading(self, name: str) -> int:
        """A descriptor on regular file ``name`` (the caller reads it as it grows, and closes it)."""
        fd = os.open(name, READ_FLAGS, dir_fd=self.fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeFile("not a regular file")
        return fd

    def give_to(self, uid: int, gid: int) -> None:
        """Hand the directory and the files in it to the worker's user (before it starts: nothing else is there).

        The progress file stays the grader's: the worker opens it before it drops its privileges, so its
        student code cannot open it again by name (it can still write through the worker's descriptor)."""
        for name in os.listdir(self.fd):
            if name in (ANSWERS, protocol.PROGRESS):  # the grader's own, and stay so
                continue
            os.chown(name, uid, gid, dir_fd=self.fd, follow_symlinks=False)
            if stat.S_ISREG(os.lstat(name, dir_fd=self.fd).st_mode):
                os.chmod(name, 0o600, dir_fd=self.fd)
        os.fchown(self.fd, uid, gid)
        os.fchmod(self.fd, 0o700)

    def make_answers(self) -> None:
        """The grader's own folder for stand-in answers: readable by the worker, written only by the grader."""
        os.mkdir(ANSWERS, 0o755, dir_fd=self.fd)
        fd = os.open(ANSWERS, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
        os.fchmod(fd, 0o755)
        self.answers_fd = fd

    def answer(self, name: str, data: bytes) -> None:
        """Put ``name`` into ``answers/`` at once (written under a temporary name, then renamed there)."""
        if self.answers_fd is None:
            raise UnsafeFile("this run has no answers folder")
        temporary = f".{name}.part"
        fd = os.open(temporary, CREATE_FLAGS, 0o644, dir_fd=self.answers_fd)
        try:
            os.fchmod(fd, 0o644)  # the worker's user reads it; nobody else's file is ever changed
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=self.answers_fd, dst_dir_fd=self.answers_fd)

    def close(self) -> None:
        """Let the descriptors go (the directory itself is removed by whoever made it)."""
        for fd in (self.fd, self.answers_fd):
            if fd is not None and fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.fd, self.answers_fd = -1, None
