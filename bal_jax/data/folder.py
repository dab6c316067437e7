"""Image-folder datasets: ROOT/train/<class>/... and ROOT/test/<class>/..., or a tarball of one.

    ds = load_folder("../shared/datasets/cifar10-jpg.tar.gz", image_size=None, cache_dir=None)

Layout (the one the BAL authors' code and torchvision's ImageFolder expect):
  - ROOT/train/<class>/**/*.{jpg,jpeg,png} (any depth below the class folder, any letter case);
    the class names are the sorted names of the folders in ROOT/train (label = position).
  - ROOT/test/<class>/... likewise, or ROOT/val/ when there is no test/; its classes must be
    train classes. A missing test split is an error rather than carved out of train, so that
    test images are never chosen silently.
  - PATH may also point at a folder holding exactly one such ROOT (what unpacking an archive
    gives), or at a .tar.gz / .tgz / .tar of it, which is unpacked once into the cache dir.
  - Other files (e.g. .txt annotations) are ignored; hidden files and folders too.
Images are converted to RGB (grey repeated, alpha dropped) and, with image_size, resized to
image_size x image_size; without it all images must share one size. Files that cannot be decoded
are skipped and listed in a warning, on every load (the list is cached too).
Ids are the POSIX paths relative to ROOT, e.g. "train/cat/0001.jpg".

Decoded arrays are cached as ROOT/.bal_jax_cache/decoded-<key>.npz, or under
<cache_dir>/folders/ when ROOT is not writable; <key> covers every image file's path, size and
mtime plus image_size, so an edited folder is decoded again.
"""

from __future__ import annotations

import hashlib
import os
import time

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


def _scan(root: str) -> tuple[tuple[str, ...], dict[str, dict[str, list[tuple[str, int, int]]]]]:
    train = _list_images(root, "train")
    if not train:
        raise ValueError(f"{root}/train has no class folders.")
    test_split = next((s for s in _TEST_SPLITS if os.path.isdir(os.path.join(root, s))), None)
    if test_split is None:
        raise ValueError(
            f"Image folder {root} has train/ but no test/ (or val/) folder; add "
            f"{root}/test/<class>/... holding held-out images."
        )
    if test_split != "test":
        logging.info("Using %s/%s as the test split.", root, test_split)
    test = _list_images(root, test_split)
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


def _decode_split(root, files_by_class, class_names, image_size):
    rels, labels = [], []
    for label, name in enumerate(class_names):
        rels.extend(rel for rel, _, _ in files_by_class.get(name, ()))
        labels.extend([label] * len(files_by_class.get(name, ())))
    images, errors = decode.decode_images(
        [os.path.join(root, r) for r in rels], image_size=image_size, channels=3
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


def _decode_all(root: str, class_names, files, image_size) -> dict[str, np.ndarray]:
    arrays, skipped, reasons, all_images, all_ids = {}, [], [], [], []
    for split in ("train", "test"):
        images, labels, ids, bad, why = _decode_split(root, files[split], class_names, image_size)
        arrays[f"{split}_labels"], arrays[f"{split}_ids"] = labels, ids
        all_images.append(images)
        all_ids.append(ids)
        skipped += bad
        reasons += why
    # One size check over both splits, so train and test can never disagree.
    stacked = decode.stack_images(
        all_images[0] + all_images[1], np.concatenate(all_ids), what=f"Image folder {root}"
    )
    arrays["train_images"] = stacked[: len(all_images[0])]
    arrays["test_images"] = stacked[len(all_images[0]) :]
    arrays["class_names"] = np.asarray(class_names, dtype=str)
    arrays["skipped"] = np.asarray(skipped, dtype=str).reshape(-1)
    arrays["skip_reasons"] = np.asarray(reasons, dtype=str).reshape(-1)
    return arrays


def load_folder(
    path: str, *, image_size: int | None = None, cache_dir: str | None = None
) -> Dataset:
    """Loads an image-folder dataset (or a tar archive of one) as in-memory arrays.

    Args:
      path: ROOT, a folder holding one ROOT, or a .tar.gz / .tgz / .tar archive of either.
      image_size: resize every image to image_size x image_size (Pillow bilinear, antialiased);
        None keeps the stored size, which must then be the same for all images.
      cache_dir: where archives are unpacked and caches go when ROOT is read-only; default
        $BAL_JAX_CACHE or ~/.cache/bal_jax.

    Returns:
      A `Dataset` named "folder:<ROOT's folder name>", RGB images, ids relative to ROOT.
    """
    cache_dir = os.path.expanduser(cache_dir or cache.default_cache_dir())
    path = os.path.normpath(os.path.expanduser(path))
    if archive.is_archive(path):
        path = archive.extract_archive(path, cache_dir=cache_dir)
    root = find_root(path)
    start = time.perf_counter()
    class_names, files = _scan(root)
    stats = [s for split in files.values() for per_class in split.values() for s in per_class]
    key = cache.fingerprint(stats, image_size=image_size, class_names=class_names)
    cache_file, stale_prefix = _cache_path(root, cache_dir, key)
    arrays = cache.load_npz(cache_file)
    if arrays is None:
        arrays = _decode_all(root, class_names, files, image_size)
        if cache.save_npz(cache_file, arrays):
            cache.remove_stale(os.path.dirname(cache_file), stale_prefix, keep=cache_file)
        how = "decoded"
    else:
        how = f"from cache {cache_file}"
    _report_skipped(root, arrays["skipped"], arrays["skip_reasons"])
    logging.info(
        "Image folder %s: %d train + %d test images, %d classes, %s in %.1f s.",
        root,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
        len(class_names),
        how,
        time.perf_counter() - start,
    )
    return make_dataset(
        name=f"folder:{os.path.basename(os.path.normpath(root))}",
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        train_ids=arrays["train_ids"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        test_ids=arrays["test_ids"],
        class_names=tuple(str(c) for c in arrays["class_names"]),
    )
