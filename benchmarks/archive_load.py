"""First load of an image-folder archive: read in memory (what `load_folder` does) against
unpacking it to disk first and loading the folder (what bal_jax did before 2026-12).

    python -m benchmarks.archive_load [--archive=../shared/datasets/cifar10-jpg.tar.gz] [--rounds=3]

Each round loads the archive both ways, alternating which goes first, each into a fresh empty
cache folder (so nothing is decoded from an earlier cache); prints the median wall, user CPU
and system CPU seconds of each, the ratio of the wall times, and the disk each way leaves in
its cache.
"""

from __future__ import annotations

import os
import statistics
import tarfile
import tempfile
import time

from absl import app, flags

from bal_jax.data import folder


def define_flags() -> None:
    """The command's flags (defined on demand: other commands own some of the names)."""
    flags.DEFINE_string(
        "archive", "../shared/datasets/cifar10-jpg.tar.gz", "An image-folder .tar.gz/.tgz/.tar."
    )
    flags.DEFINE_integer("rounds", 3, "Rounds (each loads both ways once).")


def _disk(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def in_memory(archive: str, cache_dir: str) -> int:
    ds = folder.load_folder(archive, cache_dir=cache_dir)
    return len(ds.train_ids) + len(ds.test_ids)


def unpacked(archive: str, cache_dir: str) -> int:
    dest = os.path.join(cache_dir, "extracted")
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    ds = folder.load_folder(dest, cache_dir=cache_dir)
    return len(ds.train_ids) + len(ds.test_ids)


def compare(archive: str, rounds: int) -> str:
    """The markdown table of both ways' medians (wall, user and system CPU seconds), cache
    sizes, and the ratio of their wall times."""
    ways = {"read in memory": in_memory, "unpacked, then read": unpacked}
    times = {name: [] for name in ways}  # (wall, user, system) per round
    disk, images = {}, set()
    for r in range(rounds):
        order = list(ways) if r % 2 == 0 else list(ways)[::-1]
        for name in order:
            with tempfile.TemporaryDirectory() as cache_dir:
                t, cpu = time.perf_counter(), os.times()
                images.add(ways[name](archive, cache_dir))
                after = os.times()
                times[name].append(
                    (
                        time.perf_counter() - t,
                        after.user - cpu.user,
                        after.system - cpu.system,
                    )
                )
                disk[name] = _disk(cache_dir)
    assert len(images) == 1, images  # both ways load the same images
    median = {n: [statistics.median(col) for col in zip(*t, strict=True)] for n, t in times.items()}
    lines = [
        f"`{archive}`: {images.pop():,} images, {rounds} rounds, medians.",
        "",
        "| first load | seconds | user CPU s | system CPU s | cache on disk |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {median[n][0]:.1f} | {median[n][1]:.1f} | {median[n][2]:.1f} "
            f"| {disk[n] / 1e6:.0f} MB |"
            for n in ways
        ),
        "",
        "Read in memory: "
        f"{median['unpacked, then read'][0] / median['read in memory'][0]:.2f}x faster.",
    ]
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    print(compare(flags.FLAGS.archive, flags.FLAGS.rounds))


if __name__ == "__main__":
    define_flags()
    app.run(main)
