"""Prepared TensorFlow Datasets read without TensorFlow and without network access.

    ds = load_tfds("cifar10", data_dir="~/tensorflow_datasets")   # or "svhn_cropped", ...

Only datasets already prepared under data_dir are read, from their own description
(<data_dir>/<name>[/<config>]/<version>/dataset_info.json + features.json) through
`tfds.builder_from_directory`, so any builder name works, registered or not, and nothing is
ever downloaded. The directory is probed first: an unprepared dataset gets one sentence saying
how to prepare it, at once, instead of tfds' retries and misleading data_source error.

Shards in ArrayRecord format (`tfds build NAME --file_format=array_record`) are read with
tfds' own NumPy data source; TFRecord shards (the `tfds build` default) with a small reader of
the TFRecord framing; both decode records with tfds' NumPy example parser, so TensorFlow is
never imported. Images are decoded with Pillow in a thread pool, resized to image_size if given;
a dataset with images of varying size (caltech101) defaults to 32x32. The splits are "train"
and "test" ("validation" when there is no test split); ids are "<split>/<record index>".
Decoded arrays are cached under <cache_dir>/tfds/, keyed by the prepared files' sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import time

import numpy as np
from absl import logging

from bal_jax.data import cache, decode
from bal_jax.data.dataset import Dataset, make_dataset

__all__ = [
    "DatasetNotPreparedError",
    "default_data_dir",
    "find_prepared",
    "load_tfds",
    "read_tfrecord",
]

VARIABLE_SIZE_DEFAULT = 32
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_TEST_SPLITS = ("test", "validation")


class DatasetNotPreparedError(FileNotFoundError):
    """A tfds dataset is not prepared under the data directory (and nothing is downloaded)."""


def default_data_dir() -> str:
    """$TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds' own default)."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def _versions(path: str) -> list[str]:
    """Version folders in `path` that hold a finished dataset_info.json, highest first."""
    try:
        names = os.listdir(path)
    except OSError:
        return []
    found = [
        n
        for n in names
        if _VERSION_RE.match(n) and os.path.isfile(os.path.join(path, n, "dataset_info.json"))
    ]
    return sorted(found, key=lambda v: tuple(int(x) for x in v.split(".")), reverse=True)


def _not_prepared(spec: str, name: str, data_dir: str, detail: str) -> DatasetNotPreparedError:
    return DatasetNotPreparedError(
        f"Dataset {spec!r} is not prepared under {data_dir} ({detail}); prepare it on a machine "
        f"with network access and TensorFlow with `tfds build {name} --data_dir={data_dir} "
        f"--file_format=array_record` and copy {os.path.join(data_dir, name)} here, or point "
        "--dataset=folder:PATH at a local copy laid out as PATH/train/<class>/*.png and "
        "PATH/test/<class>/*.png."
    )


def find_prepared(spec: str, data_dir: str) -> str:
    """The prepared version folder of a tfds dataset, without calling tfds.

    Args:
      spec: "name", "name/config" or either with ":version" (e.g. "cifar10:3.0.2").
      data_dir: the tfds data directory.

    Returns:
      The folder <data_dir>/<name>[/<config>]/<version> holding dataset_info.json; the highest
      version unless one is asked for, the only config unless one is named.

    Raises:
      DatasetNotPreparedError: nothing prepared there, with the command that prepares it.
    """
    base, _, version = spec.partition(":")
    name, _, config = base.partition("/")
    folder = os.path.join(data_dir, name, config) if config else os.path.join(data_dir, name)
    versions = _versions(folder)
    if not versions and not config and os.path.isdir(folder):
        configs = sorted(
            c for c in os.listdir(folder) if _versions(os.path.join(folder, c)) and c[0] != "."
        )
        if len(configs) > 1:
            raise ValueError(
                f"Dataset {name!r} is prepared in several configs under {folder}: {configs}; "
                f"name one, e.g. {name}/{configs[0]}."
            )
        if configs:
            folder = os.path.join(folder, configs[0])
            versions = _versions(folder)
    if version:
        if version not in versions:
            raise _not_prepared(spec, base, data_dir, f"no version {version} in {folder}")
        versions = [version]
    if not versions:
        raise _not_prepared(spec, base, data_dir, f"no {folder}/<version>/dataset_info.json")
    return os.path.join(folder, versions[0])


def read_tfrecord(path: str):
    """Yields the records of a TFRecord file (framing only; CRCs are not checked).

    Each record is: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC.
    """
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"Truncated TFRecord file {path}.")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                raise ValueError(f"Truncated TFRecord file {path}.")
            yield data


def _image_and_label_keys(info) -> tuple[str, str]:
    import tensorflow_datasets as tfds

    feats = info.features
    keys = info.supervised_keys
    if (
        isinstance(keys, tuple)
        and len(keys) == 2
        and all(isinstance(k, str) and k in feats for k in keys)
        and isinstance(feats[keys[0]], tfds.features.Image)
        and isinstance(feats[keys[1]], tfds.features.ClassLabel)
    ):
        return keys
    images = [k for k, f in feats.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in feats.items() if isinstance(f, tfds.features.ClassLabel)]
    if len(images) == 1 and len(labels) == 1:
        return images[0], labels[0]
    raise ValueError(
        f"Dataset {info.name!r} has no single (Image, ClassLabel) feature pair "
        f"(features: {list(feats)}); this loader reads image classification datasets only."
    )


def _records(builder, split: str, image_key: str):
    """Decoded examples of a split, the image left as encoded bytes."""
    import tensorflow_datasets as tfds

    decoders = {image_key: tfds.decode.SkipDecoding()}
    # Datasets prepared before tfds had other formats carry no file_format: those are TFRecord.
    fmt = getattr(builder.info.file_format, "value", "tfrecord")
    if fmt == "array_record":
        source = builder.as_data_source(split, decoders=decoders)
        return source.__getitems__(range(len(source)))
    if fmt == "tfrecord":
        features = builder.info.features
        return [
            features.deserialize_example_np(record, decoders=decoders)
            for path in builder.info.splits[split].filepaths
            for record in read_tfrecord(os.fspath(path))
        ]
    raise ValueError(f"Cannot read tfds file format {fmt!r} (only array_record and tfrecord).")


def _decode_split(builder, split, image_key, label_key, image_size, channels):
    examples = _records(builder, split, image_key)
    blobs = [ex[image_key] for ex in examples]
    images, errors = decode.decode_images(blobs, image_size=image_size, channels=channels)
    ok = [i for i, e in enumerate(errors) if e is None]
    bad = [(f"{split}/{i}", e) for i, e in enumerate(errors) if e is not None]
    return (
        [images[i] for i in ok],
        np.asarray([examples[i][label_key] for i in ok], np.int32),
        np.asarray([f"{split}/{i}" for i in ok], dtype=str),
        bad,
    )


def _decode_all(builder, name, image_key, label_key, image_size, channels):
    splits = list(builder.info.splits.keys())
    test_split = next((s for s in _TEST_SPLITS if s in splits), None)
    if "train" not in splits or test_split is None:
        raise ValueError(f"Dataset {name!r} needs train and test splits, it has {splits}.")
    arrays, stacks, bad = {}, [], []
    for ours, theirs in (("train", "train"), ("test", test_split)):
        images, labels, ids, skipped = _decode_split(
            builder, theirs, image_key, label_key, image_size, channels
        )
        arrays[f"{ours}_labels"], arrays[f"{ours}_ids"] = labels, ids
        stacks.append((images, ids))
        bad += skipped
    stacked = decode.stack_images(
        stacks[0][0] + stacks[1][0],
        np.concatenate([stacks[0][1], stacks[1][1]]),
        what=f"Dataset {name!r}",
    )
    arrays["train_images"] = stacked[: len(stacks[0][0])]
    arrays["test_images"] = stacked[len(stacks[0][0]) :]
    arrays["skipped"] = np.asarray([b[0] for b in bad], dtype=str).reshape(-1)
    arrays["skip_reasons"] = np.asarray([b[1] for b in bad], dtype=str).reshape(-1)
    return arrays


def load_tfds(
    spec: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
    display_name: str | None = None,
) -> Dataset:
    """Loads a prepared tfds image classification dataset as in-memory arrays.

    Args:
      spec: "name", "name/config", optionally with ":version".
      data_dir: tfds data directory; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
      image_size: resize to image_size x image_size; None keeps a fixed-size dataset's size and
        gives 32 for variable-size images.
      cache_dir: where decoded arrays are cached; default $BAL_JAX_CACHE or ~/.cache/bal_jax.
      display_name: the Dataset's name (default: spec).

    Returns:
      A `Dataset` with the channels the dataset declares (1 for grey, else 3).

    Raises:
      DatasetNotPreparedError: the dataset is not prepared under data_dir.
    """
    data_dir = os.path.expanduser(data_dir or default_data_dir())
    version_dir = find_prepared(spec, data_dir)
    start = time.perf_counter()
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder_from_directory(version_dir)
    except Exception as e:  # report any unreadable description the same way.
        raise _not_prepared(spec, spec.split(":")[0], data_dir, f"{version_dir}: {e}") from e
    info = builder.info
    alternatives = [f.value for f in getattr(info, "alternative_file_formats", ())]
    if (
        getattr(info.file_format, "value", None) != "array_record"
        and "array_record" in alternatives
    ):
        builder = tfds.builder_from_directory(version_dir, file_format="array_record")
        info = builder.info
    image_key, label_key = _image_and_label_keys(info)
    image_feature = info.features[image_key]
    if image_feature.np_dtype != np.uint8:
        raise ValueError(f"Dataset {spec!r}: {image_key} is {image_feature.np_dtype}, not uint8.")
    height, width, channels = image_feature.shape
    channels = 1 if channels == 1 else 3
    if image_size is None and (height is None or width is None):
        image_size = VARIABLE_SIZE_DEFAULT
        logging.info("Dataset %s has images of varying size; resizing to %d.", spec, image_size)
    for split in info.splits.values():
        missing = [p for p in split.filepaths if not os.path.exists(p)]
        if missing:
            raise _not_prepared(spec, spec.split(":")[0], data_dir, f"missing {missing[0]}")
    rels = sorted(os.listdir(version_dir))
    key = cache.fingerprint(
        cache.file_stats(version_dir, [r for r in rels if os.path.isfile(f"{version_dir}/{r}")]),
        image_size=image_size,
        channels=channels,
    )
    where = hashlib.sha256(os.path.abspath(version_dir).encode()).hexdigest()[:8]
    prefix = f"{info.name}-{os.path.basename(version_dir)}-{where}-"
    cache_root = os.path.expanduser(cache_dir or cache.default_cache_dir())
    cache_file = os.path.join(cache_root, "tfds", f"{prefix}{key}.npz")
    arrays = cache.load_npz(cache_file)
    how = f"from cache {cache_file}"
    if arrays is None:
        arrays = _decode_all(builder, spec, image_key, label_key, image_size, channels)
        if cache.save_npz(cache_file, arrays):
            cache.remove_stale(os.path.dirname(cache_file), prefix, keep=cache_file)
        how = "decoded"
    if len(arrays["skipped"]):
        logging.warning(
            "Dataset %s: skipped %d undecodable image(s): %s",
            spec,
            len(arrays["skipped"]),
            "; ".join(
                f"{i}: {r}"
                for i, r in zip(arrays["skipped"][:50], arrays["skip_reasons"][:50], strict=True)
            ),
        )
    logging.info(
        "Dataset %s (%s): %d train + %d test images, %s in %.1f s.",
        spec,
        version_dir,
        len(arrays["train_labels"]),
        len(arrays["test_labels"]),
        how,
        time.perf_counter() - start,
    )
    return make_dataset(
        name=display_name or spec,
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        train_ids=arrays["train_ids"],
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"],
        test_ids=arrays["test_ids"],
        class_names=tuple(info.features[label_key].names),
    )
