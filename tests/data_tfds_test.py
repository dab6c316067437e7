"""Tests for bal_jax/data/tfds_source.py without network or TensorFlow.

Small real tfds datasets are built here by `GeneratorBasedBuilder`s writing ArrayRecord shards
(TF-free in tfds 4.9: images are handed over as PIL images, which tfds encodes with Pillow), then
read through `load_dataset`, the code path the named datasets (cifar10, svhn, ...) use.
"""

import json
import os
import shutil
import struct
import time

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from bal_jax.data import decode, tfds_source
from bal_jax.data.load import load_dataset


def _images(n, seed, shape):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


class BalJaxTinyRgb(tfds.core.GeneratorBasedBuilder):
    """40 random 32x32 RGB images in 2 classes: 30 train, 10 test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(names=["left", "right"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "test": self._generate_examples(10, 1)}

    def _generate_examples(self, n, seed):
        for i, img in enumerate(_images(n, seed, (32, 32, 3))):
            yield f"{seed}-{i}", {"image": PIL.Image.fromarray(img), "label": i % 2}


class BalJaxTinyGrey(tfds.core.GeneratorBasedBuilder):
    """MNIST-like: 28x28 grey images, 3 classes, train and validation splits only."""

    VERSION = tfds.core.Version("2.1.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "digit": tfds.features.Image(shape=(28, 28, 1)),
                    "name": tfds.features.Text(),
                    "cls": tfds.features.ClassLabel(names=["a", "b", "c"]),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(12, 2),
            "validation": self._generate_examples(6, 3),
        }

    def _generate_examples(self, n, seed):
        for i, img in enumerate(_images(n, seed, (28, 28))):
            yield i, {"digit": PIL.Image.fromarray(img, "L"), "name": f"n{i}", "cls": i % 3}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    for cls in (BalJaxTinyRgb, BalJaxTinyGrey):
        cls(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def _tfds_reference(version_dir, split, key):
    """The images as tfds itself decodes them, in record order."""
    source = tfds.builder_from_directory(str(version_dir)).as_data_source(split)
    return np.stack([ex[key] for ex in source]), np.asarray([ex for ex in source], dtype=object)


def test_tiny_tfds_dataset_loads_like_tfds_reads_it(data_dir, tmp_path):
    ds = load_dataset("bal_jax_tiny_rgb", data_dir=str(data_dir), cache_dir=str(tmp_path))
    assert ds.name == "bal_jax_tiny_rgb" and ds.class_names == ("left", "right")
    assert ds.train_images.shape == (30, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (10, 32, 32, 3)
    assert ds.train_labels.dtype == np.int32
    np.testing.assert_array_equal(ds.train_ids, [f"train/{i}" for i in range(30)])
    np.testing.assert_array_equal(ds.test_ids, [f"test/{i}" for i in range(10)])
    for split in ("train", "test"):
        ref, examples = _tfds_reference(data_dir / "bal_jax_tiny_rgb" / "1.0.0", split, "image")
        np.testing.assert_array_equal(getattr(ds, f"{split}_images"), ref)
        np.testing.assert_array_equal(
            getattr(ds, f"{split}_labels"), [ex["label"] for ex in examples]
        )
    # The same multiset of images as generated (PNG is lossless); tfds shuffles the order.
    gen = _images(30, 0, (32, 32, 3))
    assert sorted(x.tobytes() for x in gen) == sorted(x.tobytes() for x in ds.train_images)
    np.testing.assert_allclose(ds.mean, (ds.train_images / 255.0).mean((0, 1, 2)), rtol=1e-10)


def test_second_load_comes_from_the_cache(data_dir, tmp_path, monkeypatch):
    first = load_dataset("bal_jax_tiny_rgb", data_dir=str(data_dir), cache_dir=str(tmp_path))
    assert len(list((tmp_path / "tfds").glob("bal_jax_tiny_rgb-1.0.0-*.npz"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(decode, "decode_images", no_decode)
    again = load_dataset("bal_jax_tiny_rgb:1.0.0", data_dir=str(data_dir), cache_dir=str(tmp_path))
    np.testing.assert_array_equal(again.train_images, first.train_images)


def test_grey_28x28_is_padded_and_validation_is_the_test_split(data_dir, tmp_path):
    ds = load_dataset("bal_jax_tiny_grey", data_dir=str(data_dir), cache_dir=str(tmp_path))
    assert ds.class_names == ("a", "b", "c")
    assert ds.train_images.shape == (12, 32, 32, 1) and ds.test_images.shape == (6, 32, 32, 1)
    assert ds.test_ids[0] == "validation/0"
    ref, _ = _tfds_reference(data_dir / "bal_jax_tiny_grey" / "2.1.0", "train", "digit")
    np.testing.assert_array_equal(ds.train_images[:, 2:30, 2:30], ref)
    assert ds.train_images[:, :2].max() == 0 and ds.train_images[:, :, 30:].max() == 0


def test_image_size_resizes(data_dir, tmp_path):
    ds = load_dataset(
        "bal_jax_tiny_rgb", data_dir=str(data_dir), image_size=64, cache_dir=str(tmp_path)
    )
    assert ds.train_images.shape == (30, 64, 64, 3)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfrecord_shards_read_without_tensorflow(data_dir, tmp_path):
    """The `tfds build` default format: rewrite the shards as real TFRecord files and compare."""
    from array_record.python import array_record_module

    src = data_dir / "bal_jax_tiny_rgb" / "1.0.0"
    dst = tmp_path / "data" / "bal_jax_tiny_rgb" / "1.0.0"
    dst.mkdir(parents=True)
    for name in os.listdir(src):
        if ".array_record-" not in name:
            shutil.copy(src / name, dst / name)
            continue
        reader = array_record_module.ArrayRecordReader(str(src / name))
        records = reader.read_all()
        reader.close()
        with open(dst / name.replace(".array_record-", ".tfrecord-"), "wb") as f:
            for rec in records:
                length = struct.pack("<Q", len(rec))
                f.write(length + struct.pack("<I", _masked_crc(length)))
                f.write(rec + struct.pack("<I", _masked_crc(rec)))
    info = json.loads((dst / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"
    (dst / "dataset_info.json").write_text(json.dumps(info))

    from_tfrecord = load_dataset(
        "bal_jax_tiny_rgb", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c")
    )
    from_array_record = load_dataset(
        "bal_jax_tiny_rgb", data_dir=str(data_dir), cache_dir=str(tmp_path / "c")
    )
    for field in ("train_images", "train_labels", "test_images", "test_labels", "test_ids"):
        np.testing.assert_array_equal(
            getattr(from_tfrecord, field), getattr(from_array_record, field)
        )


def test_truncated_tfrecord_is_an_error(tmp_path):
    path = tmp_path / "x.tfrecord"
    path.write_bytes(struct.pack("<Q", 100) + b"\0\0\0\0" + b"short")
    with pytest.raises(ValueError, match="Truncated TFRecord"):
        list(tfds_source.read_tfrecord(str(path)))


@pytest.mark.parametrize("name", ["caltech101", "cifar10", "svhn"])
def test_unprepared_named_dataset_fails_fast_with_one_clear_sentence(tmp_path, name):
    start = time.perf_counter()
    with pytest.raises(tfds_source.DatasetNotPreparedError) as err:
        load_dataset(name, data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert time.perf_counter() - start < 2.0
    msg = str(err.value)
    assert f"is not prepared under {tmp_path}" in msg and "\n" not in msg
    if name == "caltech101":
        assert f"tfds build {name} --data_dir={tmp_path} --file_format=array_record" in msg
        assert "--dataset=folder:PATH" in msg
    else:  # experiments.prepare makes these two without TensorFlow (tests/prepare_test.py).
        assert f"`python -m experiments.prepare --dataset={name} --data_dir={tmp_path}`" in msg


def test_missing_shard_is_reported_as_not_prepared(data_dir, tmp_path):
    dst = tmp_path / "bal_jax_tiny_rgb" / "1.0.0"
    shutil.copytree(data_dir / "bal_jax_tiny_rgb" / "1.0.0", dst)
    (shard,) = dst.glob("*-test.array_record-*")
    shard.unlink()
    with pytest.raises(tfds_source.DatasetNotPreparedError, match=r"missing .*test\.array_record"):
        load_dataset("bal_jax_tiny_rgb", data_dir=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_version_and_config_probing(tmp_path):
    for rel in ("ds/1.0.0", "ds/1.10.0", "ds/1.9.0", "ds/incomplete.x_2.0.0", "multi/a/1.0.0"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "dataset_info.json").write_text("{}")
    (tmp_path / "multi/b/3.0.0").mkdir(parents=True)
    (tmp_path / "multi/b/3.0.0/dataset_info.json").write_text("{}")
    assert tfds_source.find_prepared("ds", str(tmp_path)).endswith("ds/1.10.0")
    assert tfds_source.find_prepared("ds:1.9.0", str(tmp_path)).endswith("ds/1.9.0")
    assert tfds_source.find_prepared("multi/b", str(tmp_path)).endswith("multi/b/3.0.0")
    with pytest.raises(ValueError, match="several configs"):
        tfds_source.find_prepared("multi", str(tmp_path))
    with pytest.raises(tfds_source.DatasetNotPreparedError, match=r"no version 3\.0\.0"):
        tfds_source.find_prepared("ds:3.0.0", str(tmp_path))


def test_unknown_name_lists_valid_names(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset 'nope'.*digits, cifar10, svhn"):
        load_dataset("nope", data_dir=str(tmp_path))
