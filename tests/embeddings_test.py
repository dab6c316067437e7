"""bal_jax.embeddings: every format reads the same rows; every bad file is one sentence."""

import os

import numpy as np
import pytest

from bal_jax.embeddings import EmbeddingsError, read_embeddings

IDS = ["a.png", "sub/b.png", "c.jpg"]
VALUES = np.arange(6, dtype=np.float32).reshape(3, 2)


def write(tmp_path, fmt, ids=IDS, values=VALUES):
    path = str(tmp_path / f"emb{fmt}")
    if fmt == ".npz":
        np.savez(path, ids=np.asarray(ids), embeddings=values)
    elif fmt == ".npy":
        np.save(path, values)
        with open(str(tmp_path / "emb.ids.txt"), "w") as f:
            f.write("\n".join(ids) + "\n")
    elif fmt == ".csv":
        with open(path, "w") as f:
            f.write("id," + ",".join(f"e{j}" for j in range(values.shape[1])) + "\n")
            for i, row in zip(ids, values, strict=True):
                f.write(i + "," + ",".join(repr(float(v)) for v in row) + "\n")
    return path


@pytest.mark.parametrize("fmt", [".npz", ".npy", ".csv"])
def test_formats_give_the_rows_in_the_asked_order(tmp_path, fmt):
    path = write(tmp_path, fmt)
    got = read_embeddings(path, ["c.jpg", "a.png", "sub/b.png"])
    np.testing.assert_array_equal(got, VALUES[[2, 0, 1]])


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "emb.parquet")
    pq.write_table(pa.table({"id": IDS, "embedding": VALUES.tolist()}), path)
    np.testing.assert_array_equal(read_embeddings(path, IDS), VALUES)


def test_absolute_paths_match_ids_under_the_root(tmp_path):
    root = str(tmp_path / "images")
    path = write(tmp_path, ".npz", ids=[os.path.join(root, i) for i in IDS])
    np.testing.assert_array_equal(read_embeddings(path, IDS, root=root), VALUES)


@pytest.mark.parametrize(
    "ids, values, asked, kwargs, match",
    [
        (IDS[:2], VALUES[:2], IDS, {}, "no row for 1 of the 3"),
        (IDS, VALUES, IDS[:2], {}, "not in the images folder"),
        ([*IDS[:2], "a.png"], VALUES, IDS[:2], {}, "twice"),
        (IDS, np.where(VALUES == 3, np.nan, VALUES), IDS, {}, "NaN"),
        (IDS, VALUES, IDS, {"dim": 5}, "expected 5"),
    ],
)
def test_bad_files_are_one_sentence(tmp_path, ids, values, asked, kwargs, match):
    path = write(tmp_path, ".npz", ids=ids, values=values)
    with pytest.raises(EmbeddingsError, match=match):
        read_embeddings(path, asked, **kwargs)


def test_extra_rows_allowed_when_asked(tmp_path):
    path = write(tmp_path, ".npz")
    np.testing.assert_array_equal(read_embeddings(path, IDS[:1], allow_extra=True), VALUES[:1])


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("e.csv", "name,e0\na.png,1\n", "header starting with 'id'"),
        ("e.csv", "id,e0\na.png,x\n", "not a number"),
        ("e.csv", "id,e0,e1\na.png,1\n", "fields"),
        ("e.txt", "", "must be one of"),
        ("e.npz", "not a zip", "could not be read"),
        ("e.npy", "", "ids.txt"),
    ],
)
def test_unreadable_files_are_one_sentence(tmp_path, name, text, match):
    path = str(tmp_path / name)
    with open(path, "w") as f:
        f.write(text)
    with pytest.raises(EmbeddingsError, match=match):
        read_embeddings(path, ["a.png"])


def test_binary_csv_is_one_sentence(tmp_path):
    path = str(tmp_path / "e.csv")
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 jpeg")
    with pytest.raises(EmbeddingsError, match="not UTF-8"):
        read_embeddings(path, ["a.png"])
