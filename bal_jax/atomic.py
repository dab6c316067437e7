"""Atomic file and folder writes that readers never see half done, with the usual permissions.

Usage::

    with atomic_path("runs/x/summary.md") as tmp:      # a temporary name in the same folder
        write_whatever(tmp)                            # renamed onto the target on success
    with atomic_dir("runs/x/model") as tmp:            # a temporary folder beside the target
        write_files_into(tmp)                          # moved onto the target on success

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, so a results folder or
a shared pretext cache written through it could not be read by a colleague. The temporary
file here is given ``0666 & ~umask`` (0644 under the usual umask 022) before the rename, the
mode `open()` would have given the file; a temporary folder (`tempfile.mkdtemp`, 0700) gets
``0777 & ~umask``, the mode of `os.makedirs`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator

__all__ = [
    "atomic_dir",
    "atomic_path",
    "default_dir_mode",
    "default_file_mode",
    "write_json",
    "write_text",
]


def _umask() -> int:
    umask = os.umask(0o022)  # reading the umask means setting it; restore it at once
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_umask()


def default_dir_mode() -> int:
    """``0o777 & ~umask``: the mode ``os.makedirs(path)`` gives a new folder."""
    return 0o777 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str, *, suffix: str = "", sync: bool = False) -> Iterator[str]:
    """A temporary path beside `path`, renamed onto `path` if the block finishes.

    Args:
      path: the file to (re)place; its folder is created if missing.
      suffix: the temporary name's ending (some writers pick a format from it, e.g. ".png").
      sync: flush the file to disk before the rename, so that a power cut cannot leave
        `path` renamed but empty (for files whose loss would lose work, e.g. a journal).

    Yields:
      The temporary path to write. On an exception it is removed and `path` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """A temporary folder beside `path`, moved onto `path` if the block finishes.

    An earlier folder at `path` is replaced only once the block has finished: it is renamed
    aside, the new folder renamed into place and the old one deleted. POSIX cannot swap two
    folders in one call, so between those two renames (microseconds) `path` is missing;
    it never holds a half-written folder.

    Args:
      path: the folder to (re)place; its parent is created if missing. The caller checks
        that an existing `path` may be replaced.

    Yields:
      The temporary folder to fill. On an exception it is deleted and `path` is untouched.
    """
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{name}-")
    try:
        yield tmp
        os.chmod(tmp, default_dir_mode())
        try:
            os.rename(tmp, path)  # `path` missing or an empty folder: one atomic rename
            return
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        old = tempfile.mkdtemp(dir=parent, prefix=f".old-{name}-")
        try:
            os.rename(path, old)  # onto the empty folder `old`
        except BaseException:
            os.rmdir(old)
            raise
        try:
            os.rename(tmp, path)
        except BaseException:
            os.rename(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str, text: str, *, sync: bool = False) -> None:
    """Writes `text` to `path` via a temporary file and a rename: never half a file."""
    with atomic_path(path, sync=sync) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


def write_json(path: str, obj, *, sync: bool = False) -> None:
    """Writes `obj` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", sync=sync)
