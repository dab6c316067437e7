"""Tests for the image-folder source (bal_jax/data/folder.py, archive.py, cache.py, decode.py)."""

import hashlib
import logging
import os
import tarfile

import numpy as np
import PIL.Image
import pytest

from bal_jax.data import archive, cache, decode, folder
from bal_jax.data.load import load_dataset

CIFAR_TARBALL = os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "datasets", "cifar10-jpg.tar.gz"
)
CIFAR_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _save(path, arr, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(arr).save(path, **kw)


def make_tree(root, *, size=12, seed=0):
    """train/{cat,dog} and test/{cat,dog} with RGB, grey and RGBA PNGs plus one JPEG.

    Returns:
      {relative path: the RGB array the loader must produce} for every lossless image.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                rel = f"{split}/{cls}/{i}.png"
                rgb = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                if i == 1:  # Grey: repeated to three channels.
                    grey = rgb[..., 0]
                    _save(os.path.join(root, rel), grey)
                    rgb = np.repeat(grey[..., None], 3, axis=-1)
                elif i == 2:  # RGBA: alpha dropped, colour kept.
                    alpha = rng.integers(0, 256, (size, size, 1), dtype=np.uint8)
                    _save(os.path.join(root, rel), np.concatenate([rgb, alpha], -1))
                else:
                    _save(os.path.join(root, rel), rgb)
                expected[rel] = rgb
    jpg = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    _save(os.path.join(root, "train/dog/photo.JPEG"), jpg, format="JPEG")
    with open(os.path.join(root, "train/dog/notes.txt"), "w") as f:
        f.write("ignored: not an image extension")
    return expected


def _by_id(ds):
    out = dict(zip(ds.train_ids, ds.train_images, strict=True))
    out.update(zip(ds.test_ids, ds.test_images, strict=True))
    return out


def test_folder_loads_layout_modes_and_labels(tmp_path):
    root = tmp_path / "toy"
    expected = make_tree(root)
    ds = load_dataset(f"folder:{root}", cache_dir=str(tmp_path / "cache"))
    assert ds.name == "folder:toy"
    assert ds.class_names == ("cat", "dog")
    assert ds.train_images.shape == (7, 12, 12, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (4, 12, 12, 3)
    assert ds.train_labels.dtype == np.int32
    by_id = _by_id(ds)
    for rel, rgb in expected.items():
        np.testing.assert_array_equal(by_id[rel], rgb, err_msg=rel)
    assert "train/dog/photo.JPEG" in by_id
    labels = dict(zip(ds.train_ids, ds.train_labels, strict=True))
    assert labels["train/cat/0.png"] == 0 and labels["train/dog/photo.JPEG"] == 1
    ref = ds.train_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, ref.mean(0), rtol=1e-10)
    np.testing.assert_allclose(ds.std, ref.std(0), rtol=1e-10)


def test_corrupt_files_are_reported_and_skipped_even_from_cache(tmp_path, caplog, monkeypatch):
    root = tmp_path / "toy"
    make_tree(root)
    (root / "train/cat/garbage.png").write_bytes(b"this is not a png")
    good = root / "train/dog/0.png"
    (root / "train/dog/truncated.png").write_bytes(good.read_bytes()[:60])
    with caplog.at_level(logging.WARNING):
        ds = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert len(ds.train_ids) == 7 and not any("garbage" in i or "trunc" in i for i in ds.train_ids)
    assert f"{root}/train/cat/garbage.png" in caplog.text
    assert f"{root}/train/dog/truncated.png" in caplog.text
    assert "Skipped 2 unreadable" in caplog.text
    caplog.clear()

    # Second load: from the cache (decoding would fail the test), still reporting both files.
    def no_decode(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(decode, "decode_images", no_decode)
    with caplog.at_level(logging.WARNING):
        again = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert f"{root}/train/cat/garbage.png" in caplog.text
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.train_ids, ds.train_ids)


def test_cache_hit_then_invalidated_by_a_change(tmp_path, monkeypatch):
    root = tmp_path / "toy"
    make_tree(root)
    first = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    cached = list((root / ".bal_jax_cache").glob("decoded-*.npz"))
    assert len(cached) == 1
    calls = []
    real = decode.decode_images
    monkeypatch.setattr(decode, "decode_images", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert not calls
    np.testing.assert_array_equal(second.test_images, first.test_images)

    _save(str(root / "test/cat/new.png"), np.zeros((12, 12, 3), np.uint8))
    third = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert calls and len(third.test_ids) == len(first.test_ids) + 1
    assert "test/cat/new.png" in third.test_ids
    # The stale cache file is gone, only the new one remains.
    now = list((root / ".bal_jax_cache").glob("decoded-*.npz"))
    assert len(now) == 1 and now != cached

    # Touching a file (same bytes, new mtime) also invalidates.
    calls.clear()
    os.utime(root / "train/cat/0.png", ns=(1, 1))
    folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert calls


def test_read_only_data_caches_in_cache_dir(tmp_path, monkeypatch):
    root = tmp_path / "toy"
    make_tree(root)
    monkeypatch.setattr(cache, "writable_dir", lambda path: False)
    folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert not (root / ".bal_jax_cache").exists()
    assert len(list((tmp_path / "cache" / "folders").glob("toy-*.npz"))) == 1


def test_mixed_sizes_need_image_size(tmp_path):
    root = tmp_path / "toy"
    make_tree(root)
    _save(str(root / "train/cat/big.png"), np.zeros((20, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"2 different sizes.*image_size"):
        folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    ds = folder.load_folder(str(root), image_size=8, cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (8, 8, 8, 3)


def test_28x28_images_are_padded_to_32(tmp_path):
    root = tmp_path / "mnistlike"
    img = np.full((28, 28), 200, np.uint8)
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _save(str(root / split / cls / "x.png"), img)
    ds = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert ds.train_images.shape == (2, 32, 32, 3)
    assert np.all(ds.train_images[:, 2:30, 2:30] == 200)
    assert ds.train_images[:, :2].max() == 0 and ds.train_images[:, :, 30:].max() == 0


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda r: os.rename(r / "test", r / "elsewhere"), "no test/"),
        (lambda r: os.makedirs(r / "test" / "bird"), "class folders that .* lacks: \\['bird'\\]"),
        (lambda r: os.rename(r / "train", r / "training"), "has no train/ folder"),
    ],
)
def test_bad_layouts(tmp_path, mutate, match):
    root = tmp_path / "toy"
    make_tree(root)
    mutate(root)
    with pytest.raises(ValueError, match=match):
        folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))


def test_val_folder_serves_as_test_split(tmp_path):
    root = tmp_path / "toy"
    make_tree(root)
    os.rename(root / "test", root / "val")
    ds = folder.load_folder(str(root), cache_dir=str(tmp_path / "cache"))
    assert len(ds.test_ids) == 4 and ds.test_ids[0].startswith("val/")


def _tar(path, *entries, mode="w:gz"):
    """A tarball of (source path, name in the archive) pairs."""
    with tarfile.open(path, mode) as tar:
        for src, name in entries:
            tar.add(src, arcname=name)
    return path


@pytest.mark.parametrize(("suffix", "mode"), [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w")])
def test_tarball_is_read_once_in_memory_and_loads_like_the_folder(
    tmp_path, monkeypatch, suffix, mode
):
    src = tmp_path / "src"
    make_tree(src / "toy")
    (src / "toy" / "train" / ".hidden").mkdir()
    _save(str(src / "toy" / "train" / ".hidden" / "x.png"), np.zeros((12, 12, 3), np.uint8))
    tarball = _tar(tmp_path / f"toy{suffix}", (src / "toy", "toy"), mode=mode)
    cache_dir = tmp_path / "cache"
    ds = load_dataset(f"folder:{tarball}", cache_dir=str(cache_dir))
    ref = folder.load_folder(str(src / "toy"), cache_dir=str(tmp_path / "ref_cache"))
    assert ds.name == "folder:toy" and ds.class_names == ref.class_names
    for field in ("train_images", "train_labels", "train_ids", "test_images", "test_ids"):
        np.testing.assert_array_equal(getattr(ds, field), getattr(ref, field))
    # Nothing unpacked: one cache file of decoded arrays.
    assert [p.parent.name for p in cache_dir.rglob("*") if p.is_file()] == ["archives"]

    def no_read(*a, **k):
        raise AssertionError("read twice")

    monkeypatch.setattr(tarfile, "open", no_read)
    again = load_dataset(f"folder:{tarball}", cache_dir=str(cache_dir))
    assert again.name == "folder:toy"
    np.testing.assert_array_equal(again.train_images, ds.train_images)
    np.testing.assert_array_equal(again.test_ids, ds.test_ids)
    monkeypatch.undo()

    # A replaced archive is read anew, and its earlier cache file removed.
    os.utime(tarball, ns=(1, 1))
    load_dataset(f"folder:{tarball}", cache_dir=str(cache_dir))
    assert len(list((cache_dir / "archives").iterdir())) == 1


def test_tarball_with_train_at_its_top_links_and_unreadable_members(tmp_path, caplog):
    src = tmp_path / "src"
    make_tree(src)
    (src / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    os.symlink("0.png", src / "train" / "cat" / "link.png")
    tarball = _tar(tmp_path / "flat.tar.gz", (src / "train", "train"), (src / "test", "test"))
    with caplog.at_level(logging.WARNING):
        ds = folder.load_folder(str(tarball), cache_dir=str(tmp_path / "cache"))
    assert ds.name == "folder:flat" and len(ds.train_ids) == 7
    assert f"{tarball}/train/cat/broken.png" in caplog.text
    assert f"{tarball}/train/cat/link.png: a link" in caplog.text
    assert "Skipped 2 unreadable" in caplog.text


def test_old_unpacked_copies_are_removed(tmp_path):
    src = tmp_path / "src"
    make_tree(src / "toy")
    tarball = _tar(tmp_path / "toy.tar.gz", (src / "toy", "toy"))
    key = hashlib.sha256(str(tarball).encode()).hexdigest()[:8]
    old = tmp_path / "cache" / "extracted"
    (old / f"toy-{key}-0123abcd" / "toy").mkdir(parents=True)
    (old / f"other-{key}-0123abcd").mkdir()
    folder.load_folder(str(tarball), cache_dir=str(tmp_path / "cache"))
    assert [p.name for p in old.iterdir()] == [f"other-{key}-0123abcd"]


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ({"a/train/cat/0.png": 1, "b/test/cat/0.png": 1}, "has no train/ folder"),
        ({"train/cat/0.png": 1}, "no test/"),
        ({"../evil/train/cat/0.png": 1}, "points outside it"),
    ],
)
def test_bad_archives_are_refused_in_one_sentence(tmp_path, layout, match):
    png = tmp_path / "x.png"
    _save(str(png), np.zeros((4, 4, 3), np.uint8))
    tarball = _tar(tmp_path / "bad.tar.gz", *((png, name) for name in layout))
    with pytest.raises(ValueError, match=match):
        folder.load_folder(str(tarball), cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "archives").exists()


def test_damaged_tarball_gives_a_clear_error(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match="Cannot read archive"):
        load_dataset(f"folder:{bad}", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "archives").exists()


def test_decode_image_modes_and_resize():
    rgb = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    import io

    buf = io.BytesIO()
    PIL.Image.fromarray(rgb).save(buf, format="PNG")
    np.testing.assert_array_equal(
        decode.decode_image(buf.getvalue(), image_size=None, channels=3), rgb
    )
    grey = decode.decode_image(buf.getvalue(), image_size=None, channels=1)
    assert grey.shape == (4, 6, 1)
    assert decode.decode_image(buf.getvalue(), image_size=5, channels=3).shape == (5, 5, 3)
    buf16 = io.BytesIO()
    PIL.Image.fromarray(np.full((3, 3), 65535, np.uint16)).save(buf16, format="PNG")
    np.testing.assert_array_equal(
        decode.decode_image(buf16.getvalue(), image_size=None, channels=3), 255
    )


def test_archive_stem():
    assert archive.archive_stem("/a/cifar10-jpg.tar.gz") == "cifar10-jpg"
    assert archive.archive_stem("x.TGZ") == "x"


@pytest.mark.skipif(not os.path.exists(CIFAR_TARBALL), reason="shared CIFAR-10 tarball absent")
def test_cifar10_jpg_tarball_subset(tmp_path):
    """Real CIFAR-10 JPEGs: 3 images per class and split, streamed out of the tarball."""
    root, per_bucket = tmp_path / "cifar10-sub", 3
    counts = {}
    with tarfile.open(CIFAR_TARBALL) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 4:
                continue
            bucket = (parts[1], parts[2])
            if counts.get(bucket, 0) < per_bucket:
                counts[bucket] = counts.get(bucket, 0) + 1
                out = root / parts[1] / parts[2] / parts[3]
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(member).read())
            if len(counts) == 20 and min(counts.values()) == per_bucket:
                break
    ds = load_dataset(f"folder:{root}", cache_dir=str(tmp_path / "cache"))
    assert ds.class_names == CIFAR_CLASSES
    assert ds.train_images.shape == (30, 32, 32, 3) and ds.test_images.shape == (30, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [3] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [3] * 10)
    assert 0.3 < np.mean(ds.mean) < 0.7 and 0.15 < np.mean(ds.std) < 0.35  # Natural images.
    first = ds.train_ids[0]
    with PIL.Image.open(root / first) as img:
        np.testing.assert_array_equal(ds.train_images[0], np.asarray(img.convert("RGB")))


@pytest.mark.skipif(
    not os.path.exists(CIFAR_TARBALL) or os.environ.get("BAL_JAX_TEST_FULL_CIFAR") != "1",
    reason="opt-in (BAL_JAX_TEST_FULL_CIFAR=1): reads and decodes all 60,000 images once",
)
def test_cifar10_jpg_tarball_full():
    ds = load_dataset(f"folder:{CIFAR_TARBALL}")  # Default cache dir: decoded once, then reused.
    assert ds.train_images.shape == (50_000, 32, 32, 3) and ds.test_images.shape == (
        10_000,
        32,
        32,
        3,
    )
    np.testing.assert_array_equal(np.bincount(ds.train_labels), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.test_labels), [1000] * 10)
    np.testing.assert_allclose(ds.mean, (0.491, 0.482, 0.447), atol=0.01)
