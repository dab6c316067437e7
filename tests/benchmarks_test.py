"""The benchmark suite's pure parts (statistics, table formatting, plans, NumPy references),
a toy-size run of the by-phase BAL benchmark and the compile profiler on two tiny processes.

No timing assertions here: benchmarks are run with ``python -m benchmarks.run``.
"""

import math
import os
import shlex
import sys
import tarfile

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bal_jax.subpools import subpool
from benchmarks import cases, run, timing


def test_median_odd_even():
    assert timing.median([3.0, 1.0, 2.0]) == 2.0
    assert timing.median([4.0, 1.0, 2.0, 3.0]) == 2.5


@pytest.mark.parametrize("bad", [[], [1.0, float("nan")], [float("inf")]])
def test_median_rejects(bad):
    with pytest.raises(ValueError):
        timing.median(bad)


def test_speedup_is_median_of_pair_ratios():
    # Ratios ref/ours 4, 1, 1 -> 1.0, where the ratio of the medians would say 2.0 / 1.0.
    assert timing.speedup([1.0, 1.0, 2.0], [4.0, 1.0, 2.0]) == 1.0
    assert timing.speedup([2.0, 2.0], [1.0, 1.0]) == 0.5


@pytest.mark.parametrize(
    "ours, ref", [([1.0], [1.0, 2.0]), ([], []), ([0.0], [1.0]), ([1.0], [-1.0])]
)
def test_speedup_rejects(ours, ref):
    with pytest.raises(ValueError):
        timing.speedup(ours, ref)


def test_alternate_order_and_counts():
    calls = []
    fns = {"a": lambda: calls.append("a") or 1, "b": lambda: calls.append("b") or 2}
    t = timing.alternate(fns, reps=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert set(t.first) == {"a", "b"}
    assert [len(t.times[s]) for s in "ab"] == [3, 3]
    assert t.infos == {"a": 1, "b": 2}
    t = timing.alternate(fns, reps=1, warmup=0)
    assert t.first == {}
    with pytest.raises(ValueError):
        timing.alternate(fns, reps=0)


def test_format_value():
    assert timing.format_value(None, "s") == "not available"
    assert timing.format_value(0.1234, "s") == "0.123 s"
    assert timing.format_value(1234.4, "s") == "1,234 s"
    assert timing.format_value(67.26, "img/s") == "67.3 img/s"
    assert timing.format_value(1234.4, "img/s") == "1,234 img/s"
    with pytest.raises(ValueError):
        timing.format_value(1.0, "furlongs")


def test_format_table():
    rows = [
        timing.Row("train step", "w 1", 80.0, 67.0, "PyTorch", "img/s", 1.19, (900.0, None)),
        timing.Row("kmeans", "a|b", None, 2.5, "scikit-learn", "s", notes="bal_jax: missing"),
    ]
    lines = timing.format_table(rows).splitlines()
    assert lines[0] == timing.TABLE_HEADER
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert len(lines) == 4
    assert lines[2] == (
        "| train step | w 1 | 80.0 img/s | 67.0 img/s (PyTorch) | 1.19x | 900 / - |  |"
    )
    # The pipe in a setting is escaped, the missing side says so, no ratio is invented.
    assert "a\\|b" in lines[3]
    assert "| not available | 2.5 s (scikit-learn) | n/a |" in lines[3]
    # Every line has the header's number of cells.
    assert {line.replace("\\|", "").count("|") for line in lines} == {8}


def test_machine_description_has_the_basics():
    keys = dict(timing.machine_description())
    for key in (
        "CPU",
        "cores (logical / usable)",
        "jax / jaxlib",
        "torch",
        "XLA_FLAGS",
        "date (UTC)",
    ):
        assert keys[key]


@pytest.mark.parametrize("sizes", [run.QUICK, run.FULL])
def test_plans_cover_every_group(sizes):
    specs = run.plan(sizes, set(run.GROUPS))
    assert {s.group for s in specs} == set(run.GROUPS) - {"scaling"}
    for s in specs:
        assert "bal_jax" in s.case["sides"]
        if s.case["bench"] == "kcenter" and s.case["n"] > sizes.kcenter_ref_max:
            assert s.case["sides"] == ["bal_jax"]  # the NumPy reference is skipped there
        elif s.case["bench"] == "kmeans" and s.case["n"] > sizes.kmeans_ref_max:
            # so is scikit-learn's: the machine's matmul limit is the reference there
            assert s.case["sides"] == ["bal_jax", "matmul"] and s.refs == ("matmul",)
        else:
            assert set(s.refs) <= set(s.case["sides"])
        assert s.case["bench"] in cases.BUILDERS
    assert len(run.scaling_plan(sizes)) == len(sizes.scaling)


def test_kmeans_sides_run_on_a_tiny_case():
    case = dict(bench="kmeans", n=300, d=8, k=4, iters=3, tol=0.0, chunk=None)
    ours = cases.build(case, "bal_jax").run()
    assert 1 <= ours["iters"] <= 3 and ours["inertia"] > 0
    assert cases.build(case, "matmul").run() == {"gflops": 2.0 * 300 * 8 * 4 * 5 / 1e9}


def test_quick_scaling_reuses_the_main_cases():
    # --quick must stay seconds long: its scaling table re-uses cached main cases.
    main = {repr(sorted(s.case.items())) for s in run.plan(run.QUICK, set(run.GROUPS))}
    for _, cs in run.scaling_plan(run.QUICK):
        for case in cs.values():
            assert repr(sorted(case.items())) in main


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(5, 120),
    num_cycles=st.integers(1, 6),
    data=st.data(),
)
def test_numpy_subpool_matches_bal_jax(n, num_cycles, data):
    cycle = data.draw(st.integers(0, num_cycles - 1))
    beta = data.draw(st.sampled_from([0.5, 1.0, 1.2, 2.0, 3.0]))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    labeled = rng.random(n) < rng.random()
    min_size = data.draw(st.integers(0, int((~labeled).sum())))
    try:
        want = subpool(
            order, labeled, cycle=cycle, num_cycles=num_cycles, beta=beta, min_size=min_size
        )
    except ValueError:  # beta below its minimum: not the reference's business
        return
    got = cases.numpy_subpool(
        order, labeled, cycle=cycle, num_cycles=num_cycles, beta=beta, min_size=min_size
    )
    np.testing.assert_array_equal(got, want)


def test_numpy_least_confidence():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.5, 0.5]], np.float32)
    np.testing.assert_array_equal(
        cases.numpy_least_confidence(probs, np.array([3, 0, 1]), 2), [3, 1]
    )


@pytest.mark.parametrize("num_labeled", [0, 3])
def test_numpy_kcenter_greedy_matches_full_matrix_greedy(num_labeled):
    rng = np.random.default_rng(num_labeled)
    x = rng.standard_normal((60, 5)).astype(np.float32)
    labeled = np.zeros(60, bool)
    labeled[rng.choice(60, num_labeled, replace=False)] = True
    cand = ~labeled
    cand[:4] = False
    got = cases.numpy_kcenter_greedy(x, labeled, cand, 7, chunk=16)
    # Textbook Core-Set with the full N x N matrix.
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    centers = list(np.flatnonzero(labeled))
    want = []
    for _ in range(7):
        score = d[:, centers].min(1) if centers else np.full(60, np.inf)
        score[~cand] = -np.inf
        score[want] = -np.inf
        want.append(int(np.argmax(score)))
        centers.append(want[-1])
    np.testing.assert_array_equal(got, want)


def test_blobs_and_images_are_deterministic():
    np.testing.assert_array_equal(cases.blobs(50, 8, seed=1), cases.blobs(50, 8, seed=1))
    x, y = cases.images(10, seed=3)
    assert x.shape == (10, 32, 32, 3) and x.dtype == np.uint8 and y.max() < 10
    assert math.isfinite(float(cases.blobs(50, 8).sum()))


def test_torch_reference_layout():
    torch = pytest.importorskip("torch")
    from benchmarks import torch_vgg

    # kuangliu/pytorch-cifar VGG16 (the authors' model): 14,728,266 parameters.
    assert sum(p.numel() for p in torch_vgg.VGG16(10).parameters()) == 14_728_266
    model = torch_vgg.VGG16(10, width=0.125)
    assert model.feature_dim == 64
    x = torch.randint(0, 256, (3, 32, 32, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    aug = torch_vgg.augment_u8(x, generator=g)
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (3, 1), generator=g), torch.randint(0, 9, (3, 1), generator=g)
    flip = torch.rand((3, 1), generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (0, 0, 4, 4, 4, 4))
    for i in range(3):
        want = padded[i, dy[i, 0] : dy[i, 0] + 32, dx[i, 0] : dx[i, 0] + 32]
        assert torch.equal(aug[i], want.flip(1) if flip[i, 0] else want)
    probs, feats = torch_vgg.predict(
        model, x.numpy(), batch_size=2, mean=cases.CIFAR_MEAN, std=cases.CIFAR_STD
    )
    assert probs.shape == (3, 10) and feats.shape == (3, 64)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def _toy_folder(root, *, train_per_class, test_per_class):
    """An image folder of random 32x32 RGB images in 10 classes (the preset's shapes)."""
    import PIL.Image

    rng = np.random.default_rng(0)
    for split, per in (("train", train_per_class), ("test", test_per_class)):
        for c in range(10):
            os.makedirs(root / split / f"c{c}")
            for i in range(per):
                img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                PIL.Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    return f"folder:{root}"


def test_bal_run_reports_every_phase(tmp_path, monkeypatch):
    from benchmarks import bal_run

    # The preset at toy size on a folder of its shapes: the real CIFAR-10 tarball would be
    # read and decoded (60,000 JPEGs) only to keep 400 images; the cifar10_cpu smoke test
    # of runner_cli_test reads the real one.
    data = _toy_folder(tmp_path / "toy", train_per_class=30, test_per_class=10)
    # One cycle: every phase is timed in it (a second adds only its compilations).
    tiny = dict(dataset=data, train_subset=None, val_size=60, test_subset=None, fractions=(0.1,))
    monkeypatch.setattr(
        bal_run,
        "SETTINGS",
        # The preset's small_data recipe trains at least 640 steps a cycle: the paper's recipe
        # keeps the one epoch asked for.
        bal_run.SETTINGS | tiny | dict(width=0.0625, pretext_epochs=1, epochs=1, recipe="paper"),
    )
    # JAX runs already in this process: the device count is the one it has (a count in
    # XLA_FLAGS is kept); a fresh process would split the CPU into one device per core.
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={jax.device_count()}")
    out = tmp_path / "bal_run.md"
    bal_run.main([f"--out={out}"])
    text = out.read_text()
    for phase in ("pretext training", "clustering", "main-task training", "selection", "total"):
        assert f"| {phase}" in text or f"| **{phase}" in text, phase


def test_host_devices_table_reports_speedups_over_one_device():
    from benchmarks import host_devices

    def runs(steps, img_per_s):
        return [{"s_per_step": s, "img_per_s": i} for s, i in zip(steps, img_per_s, strict=True)]

    text = host_devices.table(
        {1: runs([0.2, 0.22, 0.21], [100, 100, 100]), 2: runs([0.1, 0.11, 0.1], [150, 160, 170])},
        steps=8,
        width=0.125,
        pool=64,
    )
    assert "| 1 | 0.2100 | 1.00x | 100 | 1.00x |" in text
    assert "| 2 | 0.1000 | 2.00x | 160 | 1.60x |" in text


def test_compile_profile_counts_each_process_and_what_another_compiled_again():
    from benchmarks import compile_profile as cp

    def c(pid, name, sig, s, hit=False, test="a_test.py"):
        return cp.Compile(pid, "python -c", name, sig, s, hit, test)

    text = cp.summarize(
        [
            c("1", "jit(f)", "(f32[3],)", 2.0),
            c("1", "jit(g)", "(f32[3],)", 0.5),
            c("2", "jit(f)", "(f32[3],)", 3.0, test="b_test.py"),  # could have been shared
            c("2", "jit(f)", "(f32[4],)", 1.0, test="b_test.py"),  # another shape
            c("3", "jit(f)", "(f32[3],)", 0.25, hit=True),  # a persistent-cache load
        ]
    )
    assert "5 compiles, 6.8 s, in 3 processes." in text
    assert "| python -c | 3 | 5 | 6.8 | 1 |" in text
    assert "| `jit(f)` | 4 | 2 | 6.2 |" in text
    assert "python -c 3.0 s; 3.0 s in all." in text
    # Per test file: all its compile seconds, and those of signatures no other file compiled.
    assert "| b_test.py | 2 | 4.0 | 1.0 |" in text
    assert "| a_test.py | 3 | 2.8 | 0.5 |" in text
    assert cp.process_kind("/usr/bin/python3 -u -m experiments.main --seeds=0") == (
        "python -m experiments.main"
    )
    assert cp.process_kind("python -X importtime -c import x; f(' -m y')") == "python -c"
    assert cp.process_kind("python -u /tmp/run.py -m z") == "run.py"


def test_compile_profile_logs_every_python_process_of_a_command():
    from benchmarks import compile_profile as cp

    child = shlex.join([sys.executable, "-c", "import jax; jax.jit(lambda x: x * 2)(1.0)"])
    # The second child runs as if under a test: its compiles are that test file's.
    script = f"{child} && PYTEST_CURRENT_TEST='tests/x_test.py::t (call)' {child} && exit 3"
    status, text = cp.profile(["bash", "-c", script])
    assert status == 3  # the command's own exit status
    assert "| python -c | 2 |" in text
    assert "| `jit(<lambda>)` | 2 | 1 |" in text
    assert "| tests/x_test.py | 1 |" in text


def test_archive_load_compares_both_ways_on_the_same_images(tmp_path):
    from benchmarks import archive_load

    src = _toy_folder(tmp_path / "toy", train_per_class=2, test_per_class=1).split(":", 1)[1]
    tarball = tmp_path / "toy.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src, arcname="toy")
    out = archive_load.compare(str(tarball), rounds=2)
    assert "30 images, 2 rounds" in out
    assert "| read in memory |" in out and "| unpacked, then read |" in out
    assert out.endswith("x faster.")


@pytest.mark.parametrize("workers", ["0", "2"])
def test_suite_timeline_logs_each_test_once_where_it_ran(tmp_path, workers):
    import json
    import subprocess

    from benchmarks import suite_timeline

    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "a_test.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    (tmp_path / "b_test.py").write_text("def test_c():\n    pass\n")
    log = tmp_path / "timeline.jsonl"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, BAL_JAX_TIMELINE=str(log), PYTHONPATH=root)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "benchmarks.suite_timeline", "-n", workers]
    files = [str(tmp_path / "a_test.py"), str(tmp_path / "b_test.py")]
    proc = subprocess.run(
        [*cmd, "-c", str(tmp_path / "pytest.ini"), *files],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((e["test"].split("::")[1], e["event"]) for e in events) == sorted(
        (t, ev) for t in ("test_a", "test_b", "test_c") for ev in ("start", "end")
    )
    assert {e["worker"] for e in events} <= ({"main"} if workers == "0" else {"gw0", "gw1"})
    text = suite_timeline.summary(log.read_text().splitlines())
    assert "a_test.py" in text and "b_test.py" in text and ": ends at" in text
    with pytest.raises(ValueError, match="empty"):
        suite_timeline.summary([])
