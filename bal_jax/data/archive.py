"""Reading an image-folder archive (.tar.gz, .tgz, .tar) in memory, without unpacking it.

    folders, files, links = read_archive("../shared/datasets/cifar10-jpg.tar.gz", keep=is_image)
    # folders: every folder path in the archive ("cifar10-jpg", "cifar10-jpg/train", ...)
    # files: {member path: (size, encoded bytes)} of the regular files that `keep` accepts
    # links: the member paths that `keep` accepts but that are links or devices, not files

One pass over the archive: a gzip stream is decompressed once, and nothing is written to disk
(`python -m benchmarks.archive_load`). The kept files' bytes are held in memory until they are
decoded: 55 MB for CIFAR-10's 60,000 JPEGs, whose decoded arrays take 184 MB.
Member paths are POSIX paths without a leading "./"; an absolute path or a ".." component is
refused, as tarfile's "data" extraction filter refuses them.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Callable

__all__ = ["ARCHIVE_SUFFIXES", "archive_stem", "is_archive", "read_archive"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(path: str) -> str:
    """File name without its archive suffix: "a/cifar10-jpg.tar.gz" -> "cifar10-jpg"."""
    name = os.path.basename(path)
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _member_path(archive: str, name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise ValueError(f"Cannot read archive {archive}: member {name!r} points outside it.")
    return "/".join(parts)


def read_archive(
    path: str, *, keep: Callable[[str], bool]
) -> tuple[set[str], dict[str, tuple[int, bytes]], list[str]]:
    """The folders of a tar archive and the contents of the files `keep` accepts.

    Args:
      path: a .tar.gz, .tgz or .tar file.
      keep: called with each member's path; True reads the file's bytes.

    Returns:
      (folders, files, links): every folder path (explicit or implied by a member's path);
      {path: (size, bytes)} of the kept regular files; the kept paths that are not regular
      files (links, devices), which are not followed.
    """
    folders: set[str] = set()
    files: dict[str, tuple[int, bytes]] = {}
    links: list[str] = []
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                name = _member_path(path, member.name)
                if not name:
                    continue
                parent = posixpath.dirname(name)
                while parent and parent not in folders:
                    folders.add(parent)
                    parent = posixpath.dirname(parent)
                if member.isdir():
                    folders.add(name)
                elif keep(name):
                    if member.isreg():
                        files[name] = (member.size, tar.extractfile(member).read())
                    else:
                        links.append(name)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ValueError(f"Cannot read archive {path}: {e}") from e
    return folders, files, links
