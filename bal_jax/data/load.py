"""One entry point from a dataset name (the runner's --dataset flag) to in-memory arrays.

    ds = load_dataset("digits")                                   # embedded, no download
    ds = load_dataset("cifar10", data_dir="~/tensorflow_datasets")  # prepared tfds dataset
    # or prepared without TensorFlow by `python -m experiments.prepare --dataset=cifar10`
    ds = load_dataset("folder:../shared/datasets/cifar10-jpg.tar.gz")

Names:
  - "digits": scikit-learn's digits, 32x32x1 (see bal_jax/data/digits.py).
  - "cifar10", "svhn" (tfds svhn_cropped), "caltech101" (varying sizes, resized to 32 unless
    image_size says otherwise), or any other tfds image classification dataset prepared under
    data_dir, as "name", "name/config" or "name:version" (see bal_jax/data/tfds_source.py).
    "cifar10" and "svhn" are also read from the file `python -m experiments.prepare` writes
    under data_dir when no tfds copy is there (see bal_jax/data/prepared.py).
  - "folder:PATH": an image folder or a tar archive of one (see bal_jax/data/folder.py).
28x28 images (MNIST-like) come back zero-padded to 32x32, the multiple of 32 the VGG wants.
"""

from __future__ import annotations

import os

from bal_jax.data import prepared, tfds_source
from bal_jax.data.dataset import Dataset
from bal_jax.data.digits import load_digits
from bal_jax.data.folder import load_folder

__all__ = ["DATASET_NAMES", "TFDS_ALIASES", "load_dataset"]

# Short names the runner accepts for tfds datasets, and the tfds builder each one reads.
TFDS_ALIASES = {"cifar10": "cifar10", "svhn": "svhn_cropped", "caltech101": "caltech101"}
DATASET_NAMES = ("digits", *TFDS_ALIASES, "folder:PATH")


def _check_image_size(image_size) -> int | None:
    if image_size is None:
        return None
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int or None, got {image_size!r}.")
    return image_size


def _registered_tfds_names() -> set[str]:
    import tensorflow_datasets as tfds

    return set(tfds.list_builders(with_community_datasets=False))


def _load_prepared(name: str, data_dir: str, image_size: int | None) -> Dataset:
    """cifar10 / svhn from experiments.prepare's file, or the one sentence saying how to get it."""
    data_dir = os.path.expanduser(data_dir)
    ds = prepared.load_prepared(name, data_dir=data_dir, image_size=image_size)
    if ds is None:
        raise tfds_source.DatasetNotPreparedError(
            f"Dataset {name!r} is not prepared under {data_dir}; prepare it with "
            f"`{prepared.prepare_command(name, data_dir)}`, which downloads the official files "
            "(no TensorFlow needed)."
        )
    return ds


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Loads a dataset by name as host NumPy arrays with its train statistics.

    Args:
      name: "digits", "cifar10", "svhn", "caltech101", another prepared tfds dataset, or
        "folder:PATH".
      data_dir: tfds data directory (tfds names only); default $TFDS_DATA_DIR or
        ~/tensorflow_datasets.
      image_size: resize all images to image_size x image_size; None keeps the stored size
        (digits: 32; variable-size tfds datasets: 32; folders: all images must agree).
      cache_dir: where archives are unpacked and decoded arrays cached when they cannot sit next
        to the data; default $BAL_JAX_CACHE or ~/.cache/bal_jax.

    Returns:
      The `Dataset`.

    Raises:
      ValueError: unknown name (the message lists the valid ones) or unusable data.
      tfds_source.DatasetNotPreparedError: a tfds dataset not prepared under data_dir; the
        message gives the command that prepares it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Dataset name must be a non-empty string, got {name!r}.")
    image_size = _check_image_size(image_size)
    if name == "digits":
        return load_digits(image_size=image_size)
    if name.startswith("folder:"):
        path = name[len("folder:") :]
        if not path:
            raise ValueError("folder: needs a path, e.g. folder:/data/tiny-imagenet.")
        return load_folder(path, image_size=image_size, cache_dir=cache_dir)
    base = name.split(":")[0].split("/")[0]
    spec = TFDS_ALIASES.get(base, base) + name[len(base) :]
    data_dir = data_dir or tfds_source.default_data_dir()
    try:
        tfds_source.find_prepared(spec, data_dir)
    except tfds_source.DatasetNotPreparedError:
        if name in prepared.PREPARED_NAMES:
            return _load_prepared(name, data_dir, image_size)
        if base not in TFDS_ALIASES and base not in _registered_tfds_names():
            raise ValueError(
                f"Unknown dataset {name!r}; valid names are {', '.join(DATASET_NAMES)}, or any "
                f"tfds image classification dataset prepared under {data_dir}."
            ) from None
        raise
    return tfds_source.load_tfds(
        spec, data_dir=data_dir, image_size=image_size, cache_dir=cache_dir, display_name=name
    )
