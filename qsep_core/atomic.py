"""Atomic writes: build a file or folder under a temporary name next to its destination, then rename.

A reader never sees a half-written file, an interrupted write leaves the destination as it was,
and two writers never share a temporary name (each gets its own from :mod:`tempfile`).
Temporary names are ``.<name>.<pid>-<random>.part`` in the destination's folder (same file system,
so the final :func:`os.replace` is atomic). A process killed with SIGKILL cannot remove its temporary;
the next write of the same destination removes every temporary of it whose process is gone
(:func:`clean_stale`). Results get the permissions a plain ``open()`` would give them under the
user's umask; replacing an existing file keeps that file's permissions.

Use :class:`AtomicPath` as a context manager (commit on success, clean up on error)::

    with AtomicPath("model.safetensors") as tmp:
        save_file(tensors, tmp)

or hold it open and call :meth:`AtomicPath.commit` / :meth:`AtomicPath.abort` yourself (a writer
that streams blocks). :func:`atomic_write_text` writes a whole text file in one call.
"""
from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

__all__ = ["AtomicPath", "atomic_write_text", "clean_stale", "write_error_message", "PART_SUFFIX"]

#: suffix of every temporary file or folder (``.gitignore`` lists it)
PART_SUFFIX = ".part"


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: below this many free bytes, a failed write is reported as a full disk (libsndfile only says "System error")
FULL_DISK_BYTES = 1 << 20


def write_error_message(path: str | os.PathLike, exc: BaseException, what: str = "cannot write") -> str:
    """One line saying why writing ``path`` failed, in words a user can act on (full disk, permissions, ...).

    Libraries that hide the errno (libsndfile says "System error.") are diagnosed from the folder: almost no
    free space means a full disk, a folder this user cannot write means permissions.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    code = getattr(exc, "errno", None)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if code in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < FULL_DISK_BYTES):
        return f"{what} {path}: no space left on the device holding {folder} (free some space or write elsewhere)"
    if code in (errno.EACCES, errno.EPERM) or isinstance(exc, PermissionError) or not os.access(folder, os.W_OK):
        return f"{what} {path}: permission denied (folder {folder} is not writable by this user)"
    if code == errno.EROFS:
        return f"{what} {path}: the file system holding {folder} is read-only"
    return f"{what} {path}: {getattr(exc, 'strerror', None) or exc}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary files/folders of ``dest`` left by processes that no longer run; returns them.

    Only names this module makes (``.<name>.<pid>-<random>.part``) are touched, and only when that pid is
    not a live process. Never raises.
    """
    dest = Path(dest)
    prefix = f".{dest.name}."
    removed: list[Path] = []
    try:
        entries = list(os.scandir(dest.parent if str(dest.parent) else "."))
    except OSError:
        return removed
    for e in entries:
        if not (e.name.startswith(prefix) and e.name.endswith(PART_SUFFIX)):
            continue
        pid = e.name[len(prefix):].partition("-")[0]
        if not pid.isdigit() or _pid_alive(int(pid)):
            continue
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path)
            else:
                os.unlink(e.path)
            removed.append(Path(e.path))
        except OSError:
            pass
    return removed


class AtomicPath:
    """A temporary sibling of ``dest`` that replaces ``dest`` when committed.

    Args:
        dest: the final path.
        directory: make a temporary folder instead of a file.
        overwrite: whether :meth:`commit` may replace an existing ``dest``.

    Attributes:
        dest: the final path.
        tmp: the temporary path (exists, empty, until committed or aborted).

    Raises:
        FileNotFoundError: the folder of ``dest`` does not exist.
        FileExistsError: ``dest`` exists and ``overwrite`` is False (checked here and again at commit).
        OSError: the temporary file or folder cannot be created.
    """

    def __init__(self, dest: str | os.PathLike, *, directory: bool = False, overwrite: bool = True):
        self.dest = Path(dest)
        self.directory = directory
        self.overwrite = overwrite
        folder = self.dest.parent
        if not folder.is_dir():
            raise FileNotFoundError(f"cannot write {self.dest}: folder {folder} does not exist")
        self._check_free()
        clean_stale(self.dest)
        prefix = f".{self.dest.name}.{os.getpid()}-"
        if directory:
            self.tmp: Path | None = Path(tempfile.mkdtemp(prefix=prefix, suffix=PART_SUFFIX, dir=folder))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=PART_SUFFIX, dir=folder)
            os.close(fd)
            self.tmp = Path(name)
        # tempfile creates 0600 / 0700; the result should have the permissions a plain open() would give it,
        # or those of the file it replaces
        mode = (0o777 if directory else 0o666) & ~_umask()
        try:
            old = os.stat(self.dest)
            if stat.S_ISDIR(old.st_mode) == directory:
                mode = stat.S_IMODE(old.st_mode)
        except OSError:
            pass
        os.chmod(self.tmp, mode)
        self._mode = mode

    def _fix_modes(self) -> None:
        """Writers that replace the temporary (safetensors' save_file writes 0600 files) lose its mode: give the
        result, and the plain files of a temporary folder, the permissions a plain open() would give them."""
        if self.directory:
            plain = 0o666 & ~_umask()
            for p in self.tmp.iterdir():
                if p.is_file() and not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) != plain:
                    os.chmod(p, plain)
        elif stat.S_IMODE(os.stat(self.tmp).st_mode) != self._mode:
            os.chmod(self.tmp, self._mode)

    def _check_free(self) -> None:
        if not self.overwrite and self.dest.exists():
            raise FileExistsError(f"{self.dest} exists; refusing to overwrite it")

    def commit(self) -> Path:
        """Move the temporary path over the destination; returns the destination.

        Raises:
            FileExistsError: ``dest`` appeared meanwhile and ``overwrite`` is False (the temporary is removed).
            OSError: the rename failed (the temporary is removed, the destination is unchanged).
        """
        if self.tmp is None:
            raise RuntimeError(f"{self.dest}: this atomic write was already committed or aborted")
        try:
            self._check_free()
            self._fix_modes()
            if self.directory and self.dest.exists():
                # a folder cannot be replaced in one rename: move the old one aside first
                old = self.dest.with_name(f".{self.dest.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(self.dest, old)
                os.replace(self.tmp, self.dest)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.dest)
        except BaseException:
            self.abort()
            raise
        self.tmp = None
        return self.dest

    def abort(self) -> None:
        """Remove the temporary path; the destination stays as it was. Safe to call twice."""
        if self.tmp is None:
            return
        if self.directory:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            self.tmp.unlink(missing_ok=True)
        self.tmp = None

    def __enter__(self) -> Path:
        assert self.tmp is not None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    with AtomicPath(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)
