"""Image-folder datasets: ROOT/train/<class>/... and ROOT/test/<class>/..., or a tarball of one.

    ds = load_folder("../shared/datasets/cifar10-jpg.tar.gz", image_size=None, cache_dir=None)

Layout (the one the BAL authors' code and torchvision's ImageFolder expect):
  - ROOT/train/<class>/**/*.{jpg,jpeg,png} (any depth below the class folder, any letter case);
    the class names are the sorted names of the folders in ROOT/train (label = position).
  - ROOT/test/<class>/... likewise, or ROOT/val/ when there is no test/; its classes must be
    train classes. A missing test split is an error rather than carved out of train, so that
    test images are never chosen silently.
  - PATH may also point at a folder holding exactly one such ROOT (what unpacking an archive
    gives), or at a .tar.gz / .tgz / .tar of either, which is read in memory (never unpacked).
  - Other files (e.g. .txt annotations) are ignored; hidden files and folders too.
Images are converted to RGB (grey repeated, alpha dropped) and, with image_size, resized to
image_size x image_size; without it all images must share one size. Files that cannot be decoded
are skipped and listed in a warning, on every load (the list is cached too).
Ids are the POSIX paths relative to ROOT, e.g. "train/cat/0001.jpg".

Decoded arrays are cached as ROOT/.bal_jax_cache/decoded-<key>.npz, or under
<cache_dir>/folders/ when ROOT is not writable; <key> covers every image file's path, size and
mtime plus image_size, so an edited folder is decoded again. An archive's arrays are cached
under <cache_dir>/archives/, keyed by its absolute path, size and mtime plus image_size.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import time
from collections.abc import Callable

import numpy as np
from absl import logging

from bal_jax.data import archive, cache, decode
from bal_jax.data.dataset import Dataset, make_dataset

__all__ = ["IMAGE_EXTENSIONS", "find_root", "load_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_TEST_SPLITS = ("test", "val")
_MAX_LISTED = 50


def find_root(path: str) -> str:
    """The folder holding train/: `path` itself, or its only non-hidden subfolder."""
    if os.path.isdir(os.path.join(path, "train")):
        return path
    if not os.path.isdir(path):
        raise ValueError(f"Image folder {path} does not exist.")
    subdirs = [e.path for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
    if len(subdirs) == 1 and os.path.isdir(os.path.join(subdirs[0], "train")):
        return subdirs[0]
    raise ValueError(
        f"Image folder {path} has no train/ folder; expected {path}/train/<class>/*.jpg|png and "
        f"{path}/test/<class>/... (or one folder holding them)."
    )


def _walk(path: str, rel: str, out: list[tuple[str, int, int]]) -> None:
    """Appends (relative path, size, mtime_ns) of the image files below path, any depth."""
    with os.scandir(path) as entries:
        for e in entries:
            if e.name.startswith("."):
                continue
            if e.is_dir():
                _walk(e.path, f"{rel}/{e.name}", out)
            elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                st = e.stat()
                out.append((f"{rel}/{e.name}", st.st_size, st.st_mtime_ns))


def _list_images(root: str, split: str) -> dict[str, list[tuple[str, int, int]]]:
    """{class name: sorted (path relative to root, size, mtime)} for root/split/<class>/**."""
    out = {}
    with os.scandir(os.path.join(root, split)) as entries:
        for entry in entries:
            if entry.is_dir() and not entry.name.startswith("."):
                files = []
                _walk(entry.path, f"{split}/{entry.name}", files)
                out[entry.name] = sorted(files)
    return dict(sorted(out.items()))


def _scan(
    root: str, splits: set[str], list_split: Callable[[str], dict[str, list]]
) -> tuple[tuple[str, ...], dict[str, dict[str, list[tuple[str, int, int]]]]]:
    """Class names and {"train"|"test": {class: files}} of a tree holding train/.

    Args:
      root: the tree's path, for messages.
      splits: the names of the folders in root.
      list_split: split name -> {class: sorted (path relative to root, size, mtime)}.
    """
    train = list_split("train")
    if not train:
        raise ValueError(f"{root}/train has no class folders.")
    test_split = next((s for s in _TEST_SPLITS if s in splits), None)
    if test_split is None:
        raise ValueError(
            f"Image folder {root} has train/ but no test/ (or val/) folder; add "
            f"{root}/test/<class>/... holding held-out images."
        )
    if test_split != "test":
        logging.info("Using %s/%s as the test split.", root, test_split)
    test = list_split(test_split)
    extra = sorted(set(test) - set(train))
    if extra:
        raise ValueError(
            f"{root}/{test_split} has class folders that {root}/train lacks: {extra[:10]}"
            + (f" and {len(extra) - 10} more." if len(extra) > 10 else ".")
        )
    class_names = tuple(sorted(train))
    empty = [c for c in class_names if not train[c]]
    if empty:
        logging.warning("Image folder %s: train classes with no images: %s", root, empty)
    return class_names, {"train": train, "test": test}


def _scan_folder(root: str):
    splits = {s for s in ("train", *_TEST_SPLITS) if os.path.isdir(os.path.join(root, s))}
    return _scan(root, splits, functools.partial(_list_images, root))


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) and not any(
        part.startswith(".") for part in path.split("/")
    )


def _archive_root(path: str, folders: set[str]) -> str:
    """The folder holding train/ inside an archive: "" (its top) or its only top folder."""
    if "train" in folders:
        return ""
    top = [f for f in folders if "/" not in f and not f.startswith(".")]
    if len(top) == 1 and f"{top[0]}/train" in folders:
        return top[0]
    raise ValueError(
        f"Archive {path} has no train/ folder; expected train/<class>/*.jpg|png and "
        "test/<class>/... at its top (or in the one folder at its top)."
    )


def _scan_archive(path: str, folders: set[str], files: dict, root: str):
    """`_scan` of the tree below `root` in an archive (paths made relative to root)."""
    cut = len(root) + 1 if root else 0
    below = {f[cut:] for f in folders if f.startswith(root + "/")} if root else set(folders)
    listing: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for folder in below:
        parts = folder.split("/")
        if len(parts) == 2 and not any(p.startswith(".") for p in parts):
            listing.setdefault(parts[0], {})[parts[1]] = []
    for name, (size, _) in files.items():
        rel = name[cut:]
        parts = rel.split("/")
        if (not root or name.startswith(root + "/")) and len(parts) >= 3:
            listing.setdefault(parts[0], {}).setdefault(parts[1], []).append((rel, size, 0))
    for classes in listing.values():
        for entries in classes.values():
            entries.sort()
    splits = {f for f in below if "/" not in f}
    where = os.path.join(path, root) if root else path
    return _scan(where, splits, lambda split: dict(sorted(listing.get(split, {}).items())))


def _cache_path(root: str, cache_dir: str, key: str) -> tuple[str, str]:
    """(cache file, stale-file prefix): next to the data if writable, else in cache_dir."""
    local = os.path.join(root, ".bal_jax_cache")
    if cache.writable_dir(local):
        return os.path.join(local, f"decoded-{key}.npz"), "decoded-"
    where = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:8]
    prefix = f"{os.path.basename(root)}-{where}-"
    return os.path.join(cache_dir, "folders", f"{prefix}{key}.npz"), prefix


def _report_skipped(root: str, skipped, reasons) -> None:
    if not len(skipped):
        return
    lines = [
        f"  {root}/{p}: {r}"
        for p, r in zip(skipped[:_MAX_LISTED], reasons[:_MAX_LISTED], strict=True)
    ]
    more = f"\n  ... and {len(skipped) - _MAX_LISTED} more" if len(skipped) > _MAX_LISTED else ""
    logging.warning(
        "Skipped %d unreadable image file(s) in %s:\n%s%s",
        len(skipped),
        root,
        "\n".join(lines),
        more,
    )


def _decode_split(read, files_by_class, class_names, image_size):
    rels, labels = [], []
    for label, name in enumerate(class_names):
        rels.extend(rel for rel, _, _ in files_by_class.get(name, ()))
        labels.extend([label] * len(files_by_class.get(name, ())))
    images, errors = decode.decode_images(
        [read(r) for r in rels], image_size=image_size, channels=3
    )
    ok = [i for i, e in enumerate(errors) if e is None]
    bad = [i for i, e in enumerate(errors) if e is not None]
    return (
        [images[i] for i in ok],
        np.asarray([labels[i] for i in ok], np.int32),
        np.asarray([rels[i] for i in ok], dtype=str),
        [rels[i] for i in bad],
        [errors[i] for i in bad],
    )


def _decode_all(where: str, read, class_names, files, image_size) -> dict[str, np.ndarray]:
    """Decodes every listed image; `read(rel)` gives a path to open or the encoded bytes."""
    arrays, skipped, reasons, all_images, all_ids = {}, [], [], [], []
    for split in ("train", "test"):
        images, labels, ids, bad, why = _decode_split(read, files[split], class_names, image_size)
        arrays[f"{split}_labels"], arrays[f"{split}_ids"] = labels, ids
        all_images.append(images)
        all_ids.append(ids)
        skipped += bad
        reasons += why
    # One size check over both splits, so train and test can never disagree.
    stacked = decode.stack_images(
        all_images[0] + all_images[1], np.concatenate(all_ids), what=f"Image folder {where}"
    )
    arrays["train_images"] = stacked[: len(all_images[0])]
    arrays["test_images"] = stacked[len(all_images[0]) :]
    arrays["class_names"] = np.asarray(class_names, dtype=str)
    arrays["skipped"] = np.asarray(skipped, dtype=str).reshape(-1)
    arrays["skip_reasons"] = np.asarray(reasons, dtype=str).reshape(-1)
    return arrays


def _load_tree(path: str, image_size, cache_dir: str):
    """(root, its name, arrays, how) of an image folder, decoded or from its cache."""
    root = find_root(path)
    class_names, files = _scan_folder(root)
    stats = [s for split in files.values() for per_class in split.values() for s in per_class]
    key = cache.fingerprint(stats, image_size=image_size, class_names=class_names)
    cache_file, stale_prefix = _cache_path(root, cache_dir, key)
    arrays = cache.load_npz(cache_file)
    if arrays is not None:
        return root, os.path.basename(os.path.normpath(root)), arrays, f"from cache {cache_file}"
    arrays = _decode_all(
        root, functools.partial(os.path.join, root), class_names, files, image_size
    )
    if cache.save_npz(cache_file, arrays):
        cache.remove_stale(os.path.dirname(cache_file), stale_prefix, keep=cache_file)
    return root, os.path.basename(os.path.normpath(root)), arrays, "decoded"


def _load_archive(path: str, image_size, cache_dir: str):
    """(where, name, arrays, how) of an archive of an image folder, read or from its cache."""
    path = os.path.abspath(path)
    st = os.stat(path)
    key = cache.fingerprint([(path, st.st_size, st.st_mtime_ns)], image_size=image_size)
    path_key = hashlib.sha256(path.encode()).hexdigest()[:8]
    prefix = f"{archive.archive_stem(path)}-{path_key}-"
    cache_file = os.path.join(cache_dir, "archives", f"{prefix}{key}.npz")
    arrays = cache.load_npz(cache_file)
    if arrays is not None:
        root = str(arrays["root_name"])
        where = os.path.join(path, root) if root else path
        return where, root or archive.archive_stem(path), arrays, f"from cache {cache_file}"
    folders, contents, links = archive.read_archive(path, keep=_is_image)
    root = _archive_root(path, folders)
    class_names, files = _scan_archive(path, folders, contents, root)
    cut = len(root) + 1 if root else 0
    where = os.path.join(path, root) if root else path

    def read(rel: str) -> bytes:
        return contents[f"{root}/{rel}" if root else rel][1]

    arrays = _decode_all(where, read, class_names, files, image_size)
    # Links (and devices) are not followed: listed with the unreadable files.
    linked = [
        n[cut:] for n in links if (not root or n.startswith(root + "/")) and n[cut:].count("/") >= 2
    ]
    if linked:
        why = "a link or special file in the archive (not followed)"
        arrays["skipped"] = np.concatenate([arrays["skipped"], np.asarray(linked, str)])
        arrays["skip_reasons"] = np.concatenate(
            [arrays["skip_reasons"], np.asarray([why] * len(linked), str)]
        )
    arrays["root_name"] = np.asarray(root)
    if cache.save_npz(cache_file, arrays):
        cache.remove_stale(os.path.dirname(cache_file), prefix, keep=cache_file)
    # Versions before 2026-12 unpacked archives into <cache_dir>/extracted/<prefix>*: unused now.
    old = os.path.join(cache_dir, "extracted")
    if os.path.isdir(old):
        for entry in os.listdir(old):
            if entry.startswith((prefix, f".tmp-{prefix}")):
                shutil.rmtree(os.path.join(old, entry), ignore_errors=True)
    return where, root or archive.archive_stem(path), arrays, "read and decoded"


def load_folder(
    path: str, *, image_size: int | None = None, cache_dir: str | None = None
) -> Dataset:
    """Loads an image-folder dataset (or a tar archive of one) as in-memory arrays.

    Args:
      path: ROOT, a folder holding one ROOT, or a .tar.gz / .tgz / .tar archive of either.
      image_size: resize every image to image_size x image_size (Pillow bilinear, antialiased);
        None keeps the stored size, which must then be the same for all images.
      cache_dir: where decoded arrays are cached for archives, and for folders whose ROOT is
        read-only; default $BAL_JAX_CACHE or ~/.cache/bal_jax.

    Returns:
      A `Dataset` named "folder:<ROOT's folder name>" (an archive with train/ at its top: its
      file name without the suffix), RGB images, ids relative to ROOT.
    """
    cache_dir = os.path.expanduser(cache_dir or cache.default_cache_dir())
    path = os.path.normpath(os.path.expanduser(path))
    start = time.perf_counter()
    load = _load_archive if archive.is_archive(path) else _load_tree
    where, name, arrays, how = load(path, image_size, cache_dir)
    _report_skipped(where, arrays["skipped"], arrays["skip_reasons"])
    logging.info(
        "Image folder %s: %d train + %d test images, %d classes, %s in %.1f s.",
        where,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
        len(arrays["class_names"]),
        how,
        time.perf_counter() - start,
    )
    return make_dataset(
        name=f"folder:{name}",
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        train_ids=arrays["train_ids"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        test_ids=arrays["test_ids"],
        class_names=tuple(str(c) for c in arrays["class_names"]),
    )
