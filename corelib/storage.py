"""Where and how every file of the library is written: the cache root, locks, atomic writes, digests,
tensor files whose metadata is checked on read, and user-named outputs (``--out``).

Every cache (records, needle trials, corpus embeddings, converted weights, fingerprints, timings) and every
output file goes through here, so that "write a temporary file, then rename it into place" and "read a
tensor file, check that it was made for this request" are written once.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .errors import CorelibError

log = logging.getLogger(__name__)


class StorageError(CorelibError, OSError):
    """A file or folder cannot be written (read-only, full, or not a file): the message names it and the way round."""


def cache_root() -> Path:
    """Root of every on-disk cache (`CORELIB_CACHE`, default `~/.cache/corelib`)."""
    return Path(os.environ.get("CORELIB_CACHE", Path.home() / ".cache" / "corelib")).expanduser()


def check_cache_writable(directory: Path | None = None) -> Path:
    """Fail before any forward when the cache (or a folder of it) cannot take new files."""
    directory = Path(directory) if directory is not None else cache_root()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise StorageError(err.errno, f"the cache folder {directory} cannot take new files ({err.strerror}): free "
                           "space there, or point CORELIB_CACHE (or --cache) at a writable folder") from None
    return directory


@contextmanager
def file_lock(path: Path):
    """An exclusive lock on ``path`` (created) for as long as the block runs; other processes wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def publish(tmp: str | os.PathLike, target: str | os.PathLike) -> None:
    """Rename a finished temporary file or directory into place, with the permissions the process's
    umask gives new files (mkstemp/mkdtemp create them private), so a shared cache stays readable."""
    os.chmod(tmp, (0o777 if Path(tmp).is_dir() else 0o666) & ~_umask())
    os.replace(tmp, target)


def publish_tree(tmp: Path, target: Path) -> None:
    """``publish`` for a directory whose files mkstemp-style writers may have made private: every file
    and folder under it gets the umask's permissions first."""
    umask = _umask()
    for p in tmp.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
    publish(tmp, target)


def remove_orphans(directory: Path, pattern: str) -> None:
    """Delete temporary files or folders left by killed writers (call while holding the writer's lock)."""
    for orphan in directory.glob(pattern):
        log.info("removing %s, left by an interrupted writer", orphan)
        shutil.rmtree(orphan) if orphan.is_dir() else orphan.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a unique temporary file beside ``path``, then rename it into place
    (a killed writer leaves no half-written file). The temporary file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def content_digest(obj) -> str:
    """sha256 of a JSON-able value (keys sorted): how cache keys name texts and fields."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


# ----------------------------------------------------------------------------- tensor files


def save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (a unique temporary name, renamed into place)."""
    from safetensors.torch import save_file

    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))


def header_metadata(path: Path) -> dict[str, str]:
    """A safetensors file's metadata (its header only is read); {} for an absent, torn or foreign file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception:
        return {}


def read_checked_tensors(path: Path, fields: dict, names=None, what: str = "entry"):
    """(metadata, tensors) of a safetensors cache file made for exactly ``fields`` (its ``fields``
    metadata), else None: an absent, torn, foreign or other-request file is recomputed, never used."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if json.loads(meta.get("fields", "null")) != fields:
                log.warning("%s was made for another request (stored key fields differ): recomputing this %s", path, what)
                return None
            keys = list(f.keys()) if names is None else [n for n in names if n in f.keys()]
            return meta, {name: f.get_tensor(name) for name in keys}
    except Exception as err:  # a torn, foreign or damaged file: recompute it
        log.warning("%s is unreadable (%s): recomputing this %s", path, err, what)
        return None


# ----------------------------------------------------------------------------- outputs a user names


def check_output(path: str | os.PathLike, option: str = "--out") -> Path:
    """Fail before any forward when an output could not be written where ``path`` points. The checks are
    real attempts (opening the file for appending, creating a probe file beside it), not permission bits,
    which say nothing for root or for files such as those under /proc."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    if target.is_dir():
        raise StorageError(errno.EISDIR, f"cannot write {path}: it is a directory; give a file name for {option}")
    if target.exists():
        mode = target.stat().st_mode
        if stat.S_ISFIFO(mode):
            # written through when a reader is there; a blocking open would wait for one, so look without waiting
            try:
                os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
            except OSError as err:
                if err.errno == errno.ENXIO:
                    raise StorageError(err.errno, f"{path} is a pipe with no reader: start the reader first (e.g. "
                                       f"`cat {path} &`), or give a file for {option}") from None
                raise StorageError(err.errno, f"cannot write {path} ({err.strerror}): choose another {option}") from None
            return path
        try:
            open(target, "ab").close()  # appends nothing: the file is unchanged
        except OSError as err:
            raise StorageError(err.errno, f"cannot write {path} ({err.strerror}): choose another {option} or make it "
                               "writable") from None
        if not stat.S_ISREG(mode):
            return path  # a character device: written through, never replaced
    probe = target.parent if str(target.parent) else Path(".")
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise StorageError(errno.ENOTDIR, f"cannot write {path}: {probe} is a file, not a directory; choose another {option}")
    try:
        fd, tmp = tempfile.mkstemp(dir=probe, prefix=".write-probe-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise StorageError(err.errno, f"cannot write {path}: {probe} takes no new files ({err.strerror}); choose "
                           f"another {option}") from None
    return path


def write_output(path: str | os.PathLike, text: str) -> Path:
    """Write a user-named output. A regular file (or a new one) is replaced atomically; a symlink is
    followed (its target is written, the link stays); a character device or FIFO (``/dev/stdout``,
    ``/dev/null``, a pipe) is written through and never replaced."""
    path = Path(path)
    target = path.resolve() if path.is_symlink() else path
    if target.exists() and not target.is_file():
        if target.is_dir():
            raise StorageError(errno.EISDIR, f"cannot write {path}: it is a directory; give a file name")
        try:
            with open(target, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as err:
            raise StorageError(err.errno, f"cannot write {path} ({err.strerror}): free space there or choose another "
                               "file") from None
        return path
    mode = stat.S_IMODE(target.stat().st_mode) if target.exists() else None
    try:
        atomic_write_text(target, text)
        if mode is not None:
            os.chmod(target, mode)  # replacing a file keeps its permissions
    except OSError as err:
        raise StorageError(err.errno, f"cannot write {path} ({err.strerror}): free space there or choose another "
                           "file") from None
    return path
