"""Tests for experiments/prepare.py and bal_jax/data/prepared.py; nothing leaves the machine.

Tiny archives in the official formats (SVHN's *_32x32.mat, CIFAR-10's binary tarball) are
served by an HTTP server on 127.0.0.1 started here, with the official file names; the sizes and
sha256 digests in `prepare.SOURCES` are swapped for the fakes' own, so the real download,
checking, conversion and loading code runs on them.
"""

import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pytest
import scipy.io
from runner_util import ROOT, run_runner

from bal_jax.data import prepared
from bal_jax.data.load import load_dataset
from bal_jax.data.tfds_source import DatasetNotPreparedError
from experiments import prepare

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship"]
CIFAR_NAMES += ["truck"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.files; honours Range when server.ranges; cuts one body at server.cut_after."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start, rng = 0, self.headers.get("Range")
        if rng and srv.ranges:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # the connection drops mid-file, once
            body, srv.cut_after = body[: srv.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.files, srv.requests, srv.ranges, srv.cut_after = {}, [], True, None
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def _serve(monkeypatch, srv, name, files):
    """Serves {part: (filename, bytes)} and points SOURCES[name] at them with their checksums."""
    sources = {}
    for part, (filename, data) in files.items():
        srv.files[filename] = data
        sources[part] = prepare.Source(
            f"{srv.url}/{filename}", len(data), hashlib.sha256(data).hexdigest()
        )
    monkeypatch.setitem(prepare.SOURCES, name, sources)


def _svhn_mat(n, seed):
    """An SVHN-style .mat: X (32, 32, 3, n) uint8, y (n, 1) in 1..10 (10 = digit 0)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": x, "y": y})
    return buf.getvalue(), x, y


@pytest.fixture
def svhn(monkeypatch, server):
    train, x_train, y_train = _svhn_mat(30, 0)
    test, x_test, y_test = _svhn_mat(12, 1)
    files = {"train": ("train_32x32.mat", train), "test": ("test_32x32.mat", test)}
    _serve(monkeypatch, server, "svhn", files)
    return (x_train, y_train), (x_test, y_test)


def _cifar_tarball(sizes, seed):
    """A CIFAR-10 binary tarball: records of one label byte and R, G, B planes of 32x32."""
    rng = np.random.default_rng(seed)
    out, buf = {}, io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:

        def add(name, data):
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for name, n in sizes.items():
            images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            planes = images.transpose(0, 3, 1, 2).reshape(n, -1)
            add(name, np.concatenate([labels[:, None], planes], axis=1).tobytes())
            out[name] = (images, labels)
        add("batches.meta.txt", ("\n".join(CIFAR_NAMES) + "\n\n").encode())
    return buf.getvalue(), out


def test_svhn_is_downloaded_checked_converted_and_loaded(svhn, server, tmp_path):
    (x_train, y_train), (x_test, y_test) = svhn
    lines = []
    path = prepare.prepare_dataset("svhn", data_dir=str(tmp_path / "data"), log=lines.append)
    assert path == prepared.prepared_path("svhn", str(tmp_path / "data"))
    assert sorted(p for p, _ in server.requests) == ["/test_32x32.mat", "/train_32x32.mat"]
    ds = load_dataset("svhn", data_dir=str(tmp_path / "data"))
    assert ds.name == "svhn" and ds.class_names == tuple("0123456789")
    assert ds.train_images.shape == (30, 32, 32, 3) and ds.test_images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(ds.train_images, x_train.transpose(3, 0, 1, 2))
    np.testing.assert_array_equal(ds.test_images, x_test.transpose(3, 0, 1, 2))
    # 10 is the digit 0; 1..9 stay.
    np.testing.assert_array_equal(ds.train_labels, np.where(y_train[:, 0] == 10, 0, y_train[:, 0]))
    np.testing.assert_array_equal(ds.test_labels, np.where(y_test[:, 0] == 10, 0, y_test[:, 0]))
    assert (ds.train_labels == 0).sum() == 3 and ds.train_labels.dtype == np.int32
    assert list(ds.train_ids[:2]) == ["train/0", "train/1"] and ds.test_ids[-1] == "test/11"
    # Downloads are gone once prepared; a second run neither downloads nor rewrites.
    assert sorted(os.listdir(tmp_path / "data" / "bal_jax_prepared")) == ["svhn.npz"]
    mtime = os.stat(path).st_mtime_ns
    prepare.prepare_dataset("svhn", data_dir=str(tmp_path / "data"), log=lines.append)
    assert len(server.requests) == 2 and os.stat(path).st_mtime_ns == mtime
    assert "svhn is already prepared" in lines[-1]
    resized = load_dataset("svhn", data_dir=str(tmp_path / "data"), image_size=64)
    assert resized.train_images.shape == (30, 64, 64, 3)


def test_cifar10_binary_tarball_is_converted_and_loaded(monkeypatch, server, tmp_path):
    sizes = {f"data_batch_{i}.bin": 4 for i in range(1, 6)} | {"test_batch.bin": 6}
    data, batches = _cifar_tarball(sizes, seed=2)
    _serve(monkeypatch, server, "cifar10", {"archive": ("cifar-10-binary.tar.gz", data)})
    prepare.prepare_dataset("cifar10", data_dir=str(tmp_path), keep_downloads=True, log=print)
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.class_names == tuple(CIFAR_NAMES)
    train = [batches[f"data_batch_{i}.bin"] for i in range(1, 6)]
    np.testing.assert_array_equal(ds.train_images, np.concatenate([b[0] for b in train]))
    np.testing.assert_array_equal(ds.train_labels, np.concatenate([b[1] for b in train]))
    np.testing.assert_array_equal(ds.test_images, batches["test_batch.bin"][0])
    np.testing.assert_array_equal(ds.test_labels, batches["test_batch.bin"][1])
    assert len(ds.train_ids) == 20 and len(ds.test_ids) == 6
    kept = tmp_path / "bal_jax_prepared" / "downloads" / "cifar-10-binary.tar.gz"
    assert kept.read_bytes() == data


def test_corrupt_download_is_refused_in_one_sentence(svhn, server, tmp_path):
    good = server.files["test_32x32.mat"]
    server.files["test_32x32.mat"] = good[:-1] + bytes([good[-1] ^ 1])  # same size, one bit off
    with pytest.raises(prepare.PrepareError) as err:
        prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=print)
    msg = str(err.value)
    assert "test_32x32.mat is corrupt" in msg and "it was deleted, run this command again" in msg
    assert "\n" not in msg
    downloads = tmp_path / "bal_jax_prepared" / "downloads"
    # The checked train file stays for the next run; nothing half-written is left.
    assert sorted(os.listdir(downloads)) == ["train_32x32.mat"]
    assert not os.path.exists(prepared.prepared_path("svhn", str(tmp_path)))
    server.files["test_32x32.mat"] = good
    prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=print)
    assert [p for p, _ in server.requests].count("/train_32x32.mat") == 1


def test_a_file_of_another_size_is_refused_before_it_is_read(svhn, server, tmp_path):
    server.files["train_32x32.mat"] += b"extra"
    with pytest.raises(prepare.PrepareError, match=r"sends \d+ bytes, not the \d+ of the official"):
        prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=print)
    assert not os.listdir(tmp_path / "bal_jax_prepared" / "downloads")


def test_a_missing_file_names_the_http_error(svhn, server, tmp_path):
    del server.files["test_32x32.mat"]
    with pytest.raises(prepare.PrepareError, match=r"test_32x32\.mat answered HTTP 404 Not Found"):
        prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=print)


@pytest.mark.parametrize("ranges", [True, False])
def test_cut_download_resumes_or_restarts(svhn, server, tmp_path, ranges):
    server.cut_after, server.ranges = 1000, ranges
    with pytest.raises(prepare.PrepareError, match=r"stopped at 1000 of \d+ bytes.*resume"):
        prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=print)
    part = tmp_path / "bal_jax_prepared" / "downloads" / "train_32x32.mat.part"
    assert part.stat().st_size == 1000
    lines = []
    prepare.prepare_dataset("svhn", data_dir=str(tmp_path), log=lines.append)
    assert server.requests[1] == ("/train_32x32.mat", "bytes=1000-")
    assert any(("resuming at" if ranges else "starting over") in line for line in lines)
    ds = load_dataset("svhn", data_dir=str(tmp_path))
    np.testing.assert_array_equal(ds.train_images, svhn[0][0].transpose(3, 0, 1, 2))


def test_a_file_copied_by_hand_is_used_without_network(svhn, server, tmp_path, monkeypatch):
    downloads = tmp_path / "bal_jax_prepared" / "downloads"
    downloads.mkdir(parents=True)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (downloads / name).write_bytes(server.files[name])
    prepare.prepare_dataset("svhn", data_dir=str(tmp_path), mirror=_closed_port_url(), log=print)
    assert server.requests == []
    assert len(load_dataset("svhn", data_dir=str(tmp_path)).test_labels) == 12


def test_offline_prepare_fails_fast_with_one_sentence(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.prepare",
            "--dataset=cifar10",
            f"--data_dir={tmp_path}",
            f"--mirror={_closed_port_url()}",
            "--timeout_s=5",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert err.startswith("error: Cannot download http://127.0.0.1:") and "\n" not in err
    assert "network connection" in err and "run this command again" in err
    assert time.perf_counter() - start < 60  # the import of jax is most of it


def test_not_prepared_names_the_command_in_one_sentence(tmp_path):
    command = f"python -m experiments.prepare --dataset=svhn --data_dir={tmp_path}"
    with pytest.raises(DatasetNotPreparedError) as err:
        load_dataset("svhn", data_dir=str(tmp_path))
    assert f"`{command}`" in str(err.value) and "\n" not in str(err.value)
    proc = run_runner(tmp_path / "run", "--dataset=svhn", f"--data_dir={tmp_path}", check=False)
    expected = (
        f"error: Dataset 'svhn' is not prepared under {tmp_path}; prepare it with `{command}`, "
        "which downloads the official files (no TensorFlow needed)."
    )
    assert proc.returncode == 1 and expected in proc.stderr.splitlines(), proc.stderr[-2000:]


def test_old_or_damaged_prepared_file_asks_to_prepare_again(tmp_path):
    path = prepared.prepared_path("cifar10", str(tmp_path))
    os.makedirs(os.path.dirname(path))
    np.savez(path, format=np.asarray(prepared.FORMAT - 1))
    with pytest.raises(
        ValueError, match=r"not in this bal_jax's format .*prepare --dataset=cifar10"
    ):
        load_dataset("cifar10", data_dir=str(tmp_path))
    with open(path, "wb") as f:
        f.write(b"not an npz")
    with pytest.raises(ValueError, match="is unreadable"):
        load_dataset("cifar10", data_dir=str(tmp_path))


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(prepare.PrepareError, match="this command prepares svhn, cifar10"):
        prepare.prepare_dataset("mnist", data_dir=str(tmp_path))


def test_sources_are_the_files_and_checksums_tfds_records():
    """The official sizes and digests, as the installed tfds package lists them."""
    import tensorflow_datasets as tfds

    root = os.path.dirname(tfds.__file__)
    recorded = {}
    for rel in ("datasets/svhn_cropped/checksums.tsv", "url_checksums/cifar10.txt"):
        with open(os.path.join(root, rel)) as f:
            for line in f:
                if line.strip() and not line.startswith("#"):
                    url, size, sha256 = line.split()[:3]
                    recorded[url] = (int(size), sha256)
    ours = [s for sources in prepare.SOURCES.values() for s in sources.values()]
    assert len(ours) == 3 and set(prepare.SOURCES) == set(prepared.PREPARED_NAMES)
    for source in ours:
        assert recorded[source.url] == (source.size, source.sha256)
