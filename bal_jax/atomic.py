"""Atomic file writes that readers never see half done, with the usual permissions.

Usage::

    with atomic_path("runs/x/summary.md") as tmp:      # a temporary name in the same folder
        write_whatever(tmp)                            # renamed onto the target on success

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, so a results folder or
a shared pretext cache written through it could not be read by a colleague. The temporary
file here is given ``0666 & ~umask`` (0644 under the usual umask 022) before the rename, the
mode `open()` would have given the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

__all__ = ["atomic_path", "default_file_mode"]


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode a plain ``open(path, "w")`` gives a new file."""
    umask = os.umask(0o022)  # reading the umask means setting it; restore it at once
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: str, *, suffix: str = "") -> Iterator[str]:
    """A temporary path beside `path`, renamed onto `path` if the block finishes.

    Args:
      path: the file to (re)place; its folder is created if missing.
      suffix: the temporary name's ending (some writers pick a format from it, e.g. ".png").

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
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
