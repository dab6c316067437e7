r"""Downloads CIFAR-10 or SVHN from their official sites and prepares them for the runner.

    python -m experiments.prepare --dataset=svhn                      # into ~/tensorflow_datasets
    python -m experiments.prepare --dataset=cifar10 --data_dir=/data/tfds
    python -m experiments.main --dataset=svhn --data_dir=/data/tfds --budget=small

No TensorFlow. `tfds build svhn_cropped` (download_and_prepare) cannot run in this project's
environment: tfds' svhn_cropped and cifar10 builders hand NumPy images to tfds' Image feature,
which PNG-encodes them with `tf.image.encode_png`, so building needs tensorflow (a wheel of
several hundred MB) only to write PNGs that bal_jax decodes straight back. An optional
requirements-prepare.txt with tensorflow-cpu was the other option; this one is lighter and needs
only what requirements.txt installs. It downloads the files tfds itself downloads, checks them
against the sizes and sha256 digests tfds records for them (its checksums.tsv and
url_checksums/cifar10.txt), converts them with SciPy and NumPy, and writes one .npz that
`bal_jax.data.load_dataset("svhn", data_dir=...)` reads (see bal_jax/data/prepared.py):
  - SVHN: train_32x32.mat and test_32x32.mat (73,257 + 26,032 images, about 250 MB), read with
    scipy.io.loadmat; label 10 stands for digit 0 and becomes 0, as in tfds' svhn_cropped.
  - CIFAR-10: the binary tarball cifar-10-binary.tar.gz (50,000 + 10,000 images, 170 MB), read
    with NumPy; not the Python pickle tarball, so that no downloaded pickle is ever unpickled.

Downloads go to <data_dir>/bal_jax_prepared/downloads/<file>.part, are resumed with an HTTP
Range request where the server allows it (else restarted), checked for size and sha256, and
only then renamed to <file>: a killed download resumes, a corrupt one is deleted and refused.
A file placed there by hand under its official name is used if its checksum matches. The .npz
is written to a temporary file and renamed. Downloads are deleted once the .npz is written,
unless --keep_downloads. `--mirror=URL` fetches the same file names from another server
(checksums still apply).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from absl import app, flags

from bal_jax.data import prepared, tfds_source

__all__ = ["SOURCES", "PrepareError", "Source", "download", "prepare_dataset"]

_CHUNK = 1 << 20


class Source(NamedTuple):
    """One official file: where it is, and the size and sha256 it must have."""

    url: str
    size: int
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# Sizes and digests as tfds records them (tensorflow_datasets/datasets/svhn_cropped/checksums.tsv
# and url_checksums/cifar10.txt); tests/prepare_test.py compares them with the installed tfds.
SOURCES = {
    "svhn": {
        "train": Source(
            "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
            182040794,
            "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
        ),
        "test": Source(
            "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
            64275384,
            "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        ),
    },
    "cifar10": {
        "archive": Source(
            "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            170052171,
            "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
        ),
    },
}

# Network failures (offline, refused, timed out, cut off); disk errors are not among them.
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError)


class PrepareError(Exception):
    """A download or conversion that cannot go on; the message is one sentence with the fix."""


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _open(url: str, offset: int, timeout_s: float):
    headers = {"User-Agent": "bal_jax-prepare"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)


def _fetch(url: str, part: str, source: Source, timeout_s: float, log: Callable) -> None:
    """Appends the rest of `url` to `part` (resuming at its size) until it has source.size bytes."""
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    if offset > source.size:
        offset = 0
    if offset == source.size:
        return
    try:
        response = _open(url, offset, timeout_s)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not offset:  # 416: the range is unusable; start over once.
            raise
        offset = 0
        response = _open(url, 0, timeout_s)
    with response:
        content_range = response.headers.get("Content-Range", "")
        if offset and not (response.status == 206 and content_range.startswith(f"bytes {offset}-")):
            log(f"{source.filename}: the server does not resume downloads; starting over.")
            offset = 0
        elif offset:
            log(f"{source.filename}: resuming at {offset / 1e6:.1f} MB.")
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and offset + int(length) != source.size:
            if os.path.exists(part):
                os.unlink(part)
            raise PrepareError(
                f"{url} sends {offset + int(length)} bytes, not the {source.size} of the official "
                f"{source.filename}; nothing was kept."
            )
        done, shown, start = offset, -1, time.perf_counter()
        with open(part, "ab" if offset else "wb") as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                done += len(chunk)
                if done > source.size:
                    break
                tenth = 10 * done // source.size
                if tenth != shown:
                    shown = tenth
                    rate = (done - offset) / 1e6 / max(time.perf_counter() - start, 1e-6)
                    log(
                        f"{source.filename}: {done / 1e6:.1f} of {source.size / 1e6:.1f} MB "
                        f"({rate:.1f} MB/s)"
                    )


def download(
    source: Source,
    folder: str,
    *,
    mirror: str | None = None,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> str:
    """Downloads one official file into `folder`, checked, kill-safe and resumable.

    Args:
      source: the file's URL, size and sha256.
      folder: where <filename> (and while downloading <filename>.part) go.
      mirror: a base URL to fetch <mirror>/<filename> from instead of source.url.
      timeout_s: seconds to wait for the connection and for each read.
      log: where progress lines go.

    Returns:
      The path of the verified file.

    Raises:
      PrepareError: offline or refused (nothing is deleted: the next run resumes), or the file
        has the wrong size or checksum (the partial file is deleted).
    """
    os.makedirs(folder, exist_ok=True)
    dest = os.path.join(folder, source.filename)
    if os.path.isfile(dest):
        if os.path.getsize(dest) == source.size and _sha256(dest) == source.sha256:
            return dest
        log(f"{dest} is not the official file (size or sha256 differ); downloading it again.")
        os.unlink(dest)
    url = f"{mirror.rstrip('/')}/{source.filename}" if mirror else source.url
    part = dest + ".part"
    try:
        _fetch(url, part, source, timeout_s, log)
    except urllib.error.HTTPError as e:
        raise PrepareError(
            f"{url} answered HTTP {e.code} {e.reason}: the file may have moved; copy "
            f"{source.filename} into {folder} by hand (or pass --mirror=URL) and run this "
            "command again."
        ) from None
    except _NETWORK_ERRORS as e:
        reason = getattr(e, "reason", None) or e
        origin = "" if url == source.url else f" (from {source.url})"
        raise PrepareError(
            f"Cannot download {url} ({reason}): check this machine's network connection (a "
            f"proxy goes in HTTPS_PROXY / HTTP_PROXY), or copy {source.filename}{origin} into "
            f"{folder} by hand, and run this command again."
        ) from None
    size = os.path.getsize(part)
    if size < source.size:
        raise PrepareError(
            f"The download of {url} stopped at {size} of {source.size} bytes; run this command "
            "again to resume it."
        )
    digest = _sha256(part) if size == source.size else None
    if digest != source.sha256:
        os.unlink(part)
        found = f"sha256 {digest}" if digest else f"more than {source.size} bytes"
        raise PrepareError(
            f"The download of {url} is corrupt ({found}, expected {source.size} bytes with "
            f"sha256 {source.sha256}); it was deleted, run this command again."
        )
    os.replace(part, dest)
    return dest


def _read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, 32, 32, 3) uint8 images and (N,) labels 0..9 of an SVHN *_32x32.mat file."""
    import scipy.io

    mat = scipy.io.loadmat(path)
    x, y = mat.get("X"), mat.get("y")
    if (
        not isinstance(x, np.ndarray)
        or not isinstance(y, np.ndarray)
        or x.dtype != np.uint8
        or x.ndim != 4
        or x.shape[:3] != (32, 32, 3)
        or y.size != x.shape[3]
        or (y.size and (y.min() < 1 or y.max() > 10))
    ):
        raise PrepareError(f"{path} is not an SVHN 32x32 file (X (32, 32, 3, N) uint8, y 1..10).")
    # The .mat keeps images last (MATLAB order); label 10 is the digit 0.
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), y.reshape(-1).astype(np.int32) % 10


def _convert_svhn(paths: dict[str, str]) -> dict:
    (train_x, train_y), (test_x, test_y) = (_read_svhn_mat(paths[s]) for s in ("train", "test"))
    return dict(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        class_names=[str(d) for d in range(10)],
    )


_CIFAR_RECORD = 1 + 32 * 32 * 3
_CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


def _convert_cifar10(paths: dict[str, str]) -> dict:
    """CIFAR-10's binary batches: records of 1 label byte and 3,072 image bytes (R, G, B planes)."""
    path = paths["archive"]
    members = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                name = os.path.basename(m.name)
                if m.isfile() and name in (*_CIFAR_TRAIN, "test_batch.bin", "batches.meta.txt"):
                    members[name] = tar.extractfile(m).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise PrepareError(f"Cannot read the CIFAR-10 archive {path}: {e}.") from e
    missing = [n for n in (*_CIFAR_TRAIN, "test_batch.bin", "batches.meta.txt") if n not in members]
    if missing:
        raise PrepareError(f"The CIFAR-10 archive {path} lacks {', '.join(missing)}.")
    names = [line.strip() for line in members["batches.meta.txt"].decode().splitlines()]
    names = [n for n in names if n]

    def batches(files):
        blob = b"".join(members[f] for f in files)
        if len(blob) % _CIFAR_RECORD:
            raise PrepareError(f"{path}: {files} are not whole {_CIFAR_RECORD}-byte records.")
        rec = np.frombuffer(blob, np.uint8).reshape(-1, _CIFAR_RECORD)
        images = rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return np.ascontiguousarray(images), rec[:, 0].astype(np.int32)

    train_x, train_y = batches(_CIFAR_TRAIN)
    test_x, test_y = batches(["test_batch.bin"])
    return dict(
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
        class_names=names,
    )


_CONVERTERS = {"svhn": _convert_svhn, "cifar10": _convert_cifar10}


def _is_current(path: str) -> bool:
    try:
        with np.load(path, allow_pickle=False) as f:
            return int(f["format"]) == prepared.FORMAT
    except Exception:  # unreadable or old: prepare it again.
        return False


def prepare_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    mirror: str | None = None,
    keep_downloads: bool = False,
    timeout_s: float = 30.0,
    log: Callable[[str], None] = print,
) -> str:
    """Downloads, checks and converts dataset `name`; returns the prepared .npz's path.

    Args:
      name: "svhn" or "cifar10".
      data_dir: the runner's --data_dir; default $TFDS_DATA_DIR or ~/tensorflow_datasets.
      mirror: base URL serving the official file names (default: the official sites).
      keep_downloads: keep the downloaded files after preparing.
      timeout_s: network timeout for the connection and each read.
      log: where progress lines go.

    Raises:
      PrepareError: unknown name, network failure, corrupt download or unreadable file.
    """
    if name not in SOURCES:
        raise PrepareError(f"Cannot prepare {name!r}; this command prepares {', '.join(SOURCES)}.")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or tfds_source.default_data_dir()))
    path = prepared.prepared_path(name, data_dir)
    if os.path.isfile(path) and _is_current(path):
        log(f"{name} is already prepared in {path}.")
        return path
    folder = os.path.join(os.path.dirname(path), "downloads")
    paths = {
        part: download(source, folder, mirror=mirror, timeout_s=timeout_s, log=log)
        for part, source in SOURCES[name].items()
    }
    log(f"Converting {name} ...")
    try:
        arrays = _CONVERTERS[name](paths)
        sources = [f"{s.url} {s.size} {s.sha256}" for s in SOURCES[name].values()]
        prepared.save_prepared(path, sources=sources, **arrays)
    except ValueError as e:  # the arrays failed make_dataset's checks
        raise PrepareError(f"Cannot prepare {name} from {sorted(paths.values())}: {e}") from e
    if not keep_downloads:
        for p in paths.values():
            os.unlink(p)
        if not os.listdir(folder):
            os.rmdir(folder)
    log(
        f"Prepared {name} in {path}: {len(arrays['train_labels'])} train and "
        f"{len(arrays['test_labels'])} test images, {len(arrays['class_names'])} classes."
    )
    return path


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_enum("dataset", None, list(SOURCES), "The dataset to prepare.")
    flags.DEFINE_string(
        "data_dir",
        None,
        "Where to prepare it: the runner's --data_dir (default $TFDS_DATA_DIR or "
        "~/tensorflow_datasets).",
    )
    flags.DEFINE_string("mirror", None, "Base URL serving the official file names.")
    flags.DEFINE_bool("keep_downloads", False, "Keep the downloaded files.")
    flags.DEFINE_float("timeout_s", 30.0, "Network timeout in seconds.")


def main(argv):
    f = flags.FLAGS
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    if f.dataset is None:
        sys.exit(f"error: name the dataset, --dataset={'|'.join(SOURCES)}")
    try:
        prepare_dataset(
            f.dataset,
            data_dir=f.data_dir,
            mirror=f.mirror,
            keep_downloads=f.keep_downloads,
            timeout_s=f.timeout_s,
        )
    except (PrepareError, OSError) as e:
        sys.exit(f"error: {e}")
    data_dir = f" --data_dir={f.data_dir}" if f.data_dir else ""
    print(f"Run it with: python -m experiments.main --dataset={f.dataset}{data_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
