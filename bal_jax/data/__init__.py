"""Datasets as in-memory arrays: digits, prepared tfds datasets (or cifar10 / svhn prepared by
`python -m experiments.prepare`) and image folders.

from bal_jax.data import load_dataset, split_validation, class_balanced_subset

ds = load_dataset("folder:../shared/datasets/cifar10-jpg.tar.gz")
subset_idx = class_balanced_subset(ds.train_labels, size=10_000, seed=0)
pool_idx, val_idx = split_validation(ds.train_labels[subset_idx], size=1_000, seed=0)

# or all of it at once, as the runner does: pool, validation and test splits
splits = load_active_splits("digits", val_size=200, seed=0)
"""

from bal_jax.data.dataset import Dataset as Dataset
from bal_jax.data.dataset import channel_stats as channel_stats
from bal_jax.data.dataset import make_dataset as make_dataset
from bal_jax.data.digits import load_digits as load_digits
from bal_jax.data.folder import load_folder as load_folder
from bal_jax.data.load import DATASET_NAMES as DATASET_NAMES
from bal_jax.data.load import load_dataset as load_dataset
from bal_jax.data.pools import ActiveSplits as ActiveSplits
from bal_jax.data.pools import load_active_splits as load_active_splits
from bal_jax.data.prepared import load_prepared as load_prepared
from bal_jax.data.resplit import drop_classes as drop_classes
from bal_jax.data.resplit import resplit as resplit
from bal_jax.data.splits import class_balanced_subset as class_balanced_subset
from bal_jax.data.splits import split_validation as split_validation
from bal_jax.data.tfds_source import DatasetNotPreparedError as DatasetNotPreparedError
from bal_jax.data.tfds_source import load_tfds as load_tfds
