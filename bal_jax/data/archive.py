"""Unpacking an image-folder archive (.tar.gz, .tgz, .tar) once into the cache directory.

    root = extract_archive("../shared/datasets/cifar10-jpg.tar.gz", cache_dir="~/.cache/bal_jax")
    # -> ~/.cache/bal_jax/extracted/cifar10-jpg-<path key>-<size+mtime key>/, the archive's tree

The archive is unpacked into a temporary sibling folder that is renamed into place when
complete, so an interrupted or concurrent extraction never leaves a half tree that looks done.
The key covers the archive's absolute path, size and mtime: a replaced archive is unpacked anew.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import time

from absl import logging

__all__ = ["ARCHIVE_SUFFIXES", "archive_stem", "extract_archive", "is_archive"]

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


def extract_archive(path: str, *, cache_dir: str) -> str:
    """Unpacks a tar archive into cache_dir once and returns the folder it was unpacked into.

    Args:
      path: a .tar.gz, .tgz or .tar file.
      cache_dir: cache root; the tree goes to <cache_dir>/extracted/<stem>-<keys>/.

    Returns:
      The extraction folder (its contents are the archive's members, e.g. cifar10-jpg/train/...).
    """
    path = os.path.abspath(path)
    st = os.stat(path)
    where = hashlib.sha256(path.encode()).hexdigest()[:8]
    version = hashlib.sha256(f"{st.st_size}\t{st.st_mtime_ns}".encode()).hexdigest()[:8]
    parent = os.path.join(cache_dir, "extracted")
    prefix = f"{archive_stem(path)}-{where}-"
    dest = os.path.join(parent, prefix + version)
    if os.path.isdir(dest):
        return dest
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".tmp-{prefix}")
    start = time.perf_counter()
    try:
        try:
            with tarfile.open(path) as tar:
                # The "data" filter refuses absolute paths, links out of the tree, device files.
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ValueError(f"Cannot unpack archive {path}: {e}") from e
        try:
            os.rename(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):  # Not another process finishing first: a real error.
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logging.info("Extracted %s to %s in %.1f s.", path, dest, time.perf_counter() - start)
    # Earlier extractions of the same archive path (since replaced or touched) are stale.
    for name in os.listdir(parent):
        if name.startswith(prefix) and name != os.path.basename(dest):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return dest
