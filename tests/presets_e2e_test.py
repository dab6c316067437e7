"""Every preset x every budget at toy size, through the real loaders (issue 13).

A locally built tfds dataset of the right name, shape and class count stands in for cifar10,
svhn_cropped and caltech101 (102 labels with background_google, variable image sizes), an
image folder for tiny_imagenet (64x64, 200 classes) and for cifar10_cpu, the embedded digits
for digits_cpu. Two layers, one process, shared compiled shapes (same width, batch sizes):

- every preset x budget (18) x every method: flags, data, plan (cycle counts, beta grid,
  search budget, windows) and every cycle's selection with stand-in predictions, no training;
- every method through the large budget to its end on one pool (selections only);
- the large SVHN budget, which used to fail at beta = 1 after pretext, search and a whole BAL
  run, through `run_experiment` with training (pretext, beta search, BAL, reports);
- the other image size and training settings trained end to end (pretext, K-means, every
  cycle's training, inference and reports): Caltech-101 (64x64, 101 classes) on its medium
  budget with BAL, CIFAR-10 (crop + flip) on its small budget with BAL and random, and
  `bal_switch` below its switch (no beta at all). Tiny ImageNet's network is Caltech-101's with
  a 200-wide last layer: it is planned and selected above, not trained (its compile would cost
  about a minute of the suite).

Training every preset x budget x method would take many minutes on a 2-core CPU (a compile per
image shape and setting, a checkpoint per cycle), past the suite's budget, and what a budget
changes (cycle counts, sizes, windows) is what the first layer checks without training. The
other trained paths: digits_cpu in pipeline_test, cifar10_cpu (small-data recipe, flip
averaging, real CIFAR-10) in runner_cli_test's smoke run, every method in both.
"""

import os

import jax
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from bal_jax import methods as methods_lib
from bal_jax.active_loop import Split, _check_selection
from experiments import config as config_lib
from experiments import report
from experiments.config import load_data
from experiments.pipeline import check_config, make_plan, run_experiment

BUDGETS = ("small", "medium", "large")
# Shared by every preset so the jitted steps compile once per image shape and class count.
TOY = dict(
    width=0.0625,
    pretext_epochs=1,
    epochs=1,
    # Batches of 1: labeled sets smaller than a batch would compile one step per set size.
    batch_size=1,
    pretext_batch_size=16,
    eval_batch_size=16,
    methods=methods_lib.METHODS,
    seeds=(0,),
    kmeans_n_init=2,
)


def _image(rng, h, w, c=3):
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, c), dtype=np.uint8))


def _builder(name, *, shape, labels, per_class, sizes=None):
    """A tfds builder class called `name` with `per_class` train and 1 test image per label."""

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=shape),
                    "label": tfds.features.ClassLabel(names=labels),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {
            "train": self._generate_examples(per_class, 0),
            "test": self._generate_examples(1, 1),
        }

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for label in range(len(labels)):
            for i in range(n):
                h, w = sizes[(label + i) % len(sizes)] if sizes else shape[:2]
                yield f"{label}-{i}", {"image": _image(rng, h, w), "label": label}

    with tfds.core.registered.skip_registration():
        return type(
            name,
            (tfds.core.GeneratorBasedBuilder,),
            {
                "VERSION": tfds.core.Version("1.0.0"),
                "_info": _info,
                "_split_generators": _split_generators,
                "_generate_examples": _generate_examples,
            },
        )


def _folder(root, *, classes, size, train_per_class, test_classes):
    rng = np.random.default_rng(2)
    for split, per, names in (
        ("train", train_per_class, classes),
        ("test", 1, classes[:test_classes]),
    ):
        for name in names:
            os.makedirs(root / split / name)
            for i in range(per):
                _image(rng, size, size).save(root / split / name / f"{i}.png")
    return f"folder:{root}"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Preset name -> the toy overrides pointing it at a local dataset of its shapes."""
    root = tmp_path_factory.mktemp("toy")
    old_cache = os.environ.get("BAL_JAX_CACHE")
    os.environ["BAL_JAX_CACHE"] = str(root / "cache")
    data_dir = root / "tfds"
    ten = [str(i) for i in range(10)]
    caltech = ["accordion", "background_google", *(f"class{i:03d}" for i in range(100))]
    _builder("Cifar10", shape=(32, 32, 3), labels=ten, per_class=6)(
        data_dir=str(data_dir), file_format="array_record"
    ).download_and_prepare()
    # 60 train images - 13 validation = a pool of 47: large-budget k = 5 > N/C = 4.7.
    _builder("SvhnCropped", shape=(32, 32, 3), labels=ten, per_class=6)(
        data_dir=str(data_dir), file_format="array_record"
    ).download_and_prepare()
    _builder(
        "Caltech101",
        shape=(None, None, 3),
        labels=caltech,
        per_class=1,
        sizes=[(20, 24), (28, 20)],
    )(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
    tiny = _folder(
        root / "tiny",
        classes=[f"n{i:03d}" for i in range(200)],
        size=64,
        train_per_class=2,  # K-means needs a pool of at least K = 200 images
        test_classes=20,
    )
    cifar_jpg = _folder(root / "cifar", classes=ten, size=32, train_per_class=6, test_classes=10)
    common = dict(TOY, data_dir=str(data_dir))
    yield {
        "digits_cpu": dict(common, train_subset=60, val_size=10, test_subset=20),
        "cifar10": dict(common, val_size=10),
        "svhn": dict(common, val_size=13),
        "caltech101": dict(common, val_size=20),
        "tiny_imagenet": dict(common, dataset=tiny, val_size=20),
        "cifar10_cpu": dict(common, dataset=cifar_jpg, train_subset=None, val_size=10),
    }
    if old_cache is None:
        os.environ.pop("BAL_JAX_CACHE")
    else:
        os.environ["BAL_JAX_CACHE"] = old_cache


def _config(toy, preset, budget, **changes):
    return config_lib.override(
        config_lib.PRESETS[preset](), budget=budget, **(toy[preset] | changes)
    )


_SHAPES = {
    "digits_cpu": ((32, 32, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "svhn": ((32, 32, 3), 10),
    "caltech101": ((64, 64, 3), 101),
    "tiny_imagenet": ((64, 64, 3), 200),
    "cifar10_cpu": ((32, 32, 3), 10),
}


# The methods whose selections depend on the budget's windows (sub-pools, equal batches);
# the others pick k of the unlabeled pool, checked on one pool for every budget below.
WINDOWED = ("bal", "pt4al")


def _simulate(cfg, plan, pool: Split, beta: float | None, methods=WINDOWED, cycles=None):
    """Every cycle of `methods` (or those in `cycles`; the others label stand-in random
    picks) with stand-in predictions: valid selections."""
    rng = np.random.default_rng(0)
    n = pool.images.shape[0]
    num_classes = plan.num_clusters
    feats = rng.normal(size=(n, 8)).astype(np.float32)
    context = methods_lib.SelectionContext(
        bal_order=rng.permutation(n),
        pt4al_order=rng.permutation(n),
        pretext_features_ND=feats,
        beta=beta,
        bal_options=plan.bal_options(cfg),
        pt4al_normalize_logits=cfg.pt4al_normalize_logits,
    )
    for method in methods:
        labeled = np.zeros(n, bool)
        for cycle, k in enumerate(plan.counts):
            if cycles is not None and cycle not in cycles:
                labeled[rng.permutation(np.flatnonzero(~labeled))[:k]] = True
                continue
            logits = rng.normal(size=(n, num_classes)).astype(np.float32)
            probs = np.asarray(jax.nn.softmax(logits, axis=-1))
            preds = methods_lib.PoolPredictions(
                probs_NC=probs,
                logits_NC=logits,
                features_ND=feats,
                mc_probs_TNC=np.stack([probs, probs[::-1]]),
            )
            picked = np.asarray(
                methods_lib.select(
                    method,
                    jax.random.key(cycle),
                    cycle=cycle,
                    num_cycles=len(plan.counts),
                    k=k,
                    labeled_mask=labeled,
                    context=context,
                    preds=preds,
                ),
                np.int64,
            )
            _check_selection(picked, labeled, k, method, cycle)
            labeled[picked] = True


@pytest.mark.parametrize("preset", sorted(config_lib.PRESETS))
def test_every_budget_of_every_preset_plans_and_selects_to_its_end(toy, preset):
    for budget in BUDGETS:
        cfg = _config(toy, preset, budget)
        check_config(cfg)
        d = load_data(cfg)
        shape, classes = _SHAPES[preset]
        assert d.pool.images.shape[1:] == shape and len(d.class_names) == classes
        plan = make_plan(
            cfg,
            pool_size=d.pool.images.shape[0],
            val_size=d.val.images.shape[0],
            num_classes=len(d.class_names),
        )
        assert len(plan.counts) == len(config_lib.Config(budget=budget).schedule)
        assert sum(plan.counts) <= d.pool.images.shape[0]
        # The real grid of the preset: its smallest and largest admissible candidates.
        for beta in sorted({plan.beta_grid[0], plan.beta_grid[-1]}):
            _simulate(cfg, plan, d.pool, beta)


def test_every_method_selects_through_the_large_budget_to_its_end(toy):
    # Ten cycles, the last taking every image left; the non-windowed methods pick k of the
    # unlabeled pool, so their budget-specific risk is this one (small/medium: smaller k).
    # The first two cycles (nothing / one cycle labeled) and the last three (the pool running
    # out) are selected by each method; the middle ones, the same code at other counts, label
    # stand-in random picks (TypiClust's K-means compiles once per cluster count).
    cfg = _config(toy, "svhn", "large")
    d = load_data(cfg)
    plan = make_plan(
        cfg,
        pool_size=d.pool.images.shape[0],
        val_size=d.val.images.shape[0],
        num_classes=len(d.class_names),
    )
    last = len(plan.counts) - 1
    cycles = {0, 1, last - 2, last - 1, last}
    _simulate(cfg, plan, d.pool, plan.beta_grid[0], methods=methods_lib.METHODS, cycles=cycles)


def test_svhn_large_budget_runs_to_its_end(toy, tmp_path):
    # The setting that failed after pretext, search and a whole BAL run: k*C/N = 50/47 > 1.
    # (PT4AL's equal batches at this budget: the selection tests above.)
    cfg = _config(toy, "svhn", "large", methods=("bal",), beta_grid=(1.0, 2.0))
    lines = []
    records = run_experiment(cfg, str(tmp_path / "run"), log=lines.append)
    assert len(records) == 10 and records[-1]["num_labeled"] == 47
    assert all(np.isfinite(r["accuracy"]) for r in records)
    assert {r["beta"] for r in records if r["method"] == "bal"} <= {1.0, 2.0}
    summary = open(tmp_path / "run" / "summary.md").read()
    assert "Budget fractions are of the pool" in summary and "Augmentation: crop." in summary
    assert len(report.read_jsonl(str(tmp_path / "run" / "results.jsonl"))) == len(records)


# The two image sizes, 32x32 and 64x64 (every method's selections are checked on every budget
# above; Tiny-ImageNet: see the module docstring). One process, so the 32x32 programs compiled
# for the SVHN run serve the CIFAR-10 cases.
TRAINED = [
    ("caltech101", "medium", ("bal",), dict(beta=1.0)),
    ("cifar10", "small", ("bal", "random"), dict(beta=1.0)),
    # bal_switch below its switch in every cycle: typical picks, no beta search at all.
    ("cifar10", "small", ("bal_switch",), dict(switch_fraction=1.0)),
]


@pytest.mark.parametrize(("preset", "budget", "methods", "changes"), TRAINED)
def test_every_network_shape_trains_to_the_end_of_a_budget(
    toy, tmp_path, preset, budget, methods, changes
):
    cfg = _config(toy, preset, budget, methods=methods, **changes)
    lines = []
    records = run_experiment(cfg, str(tmp_path / "run"), log=lines.append)
    cycles = len(config_lib.Config(budget=budget).schedule)
    assert [(r["method"], r["cycle"]) for r in records] == [
        (m, c) for m in methods for c in range(cycles)
    ]
    assert all(np.isfinite(r["accuracy"]) for r in records)
    assert (tmp_path / "run" / "summary.md").exists()
    if "bal_switch" in methods:
        assert any("needs no beta" in line for line in lines) and not any(
            "[beta search]" in line for line in lines
        )
        assert {r["beta"] for r in records if r["method"] == "bal_switch"} == {None}
