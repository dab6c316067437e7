"""Runner flags and presets: bad input fails before any training with one sentence."""

import dataclasses

import pytest
from absl import flags

from experiments import config as config_lib
from experiments import main as main_lib
from experiments.pipeline import ConfigError, check_config


def _flags(*argv):
    fv = flags.FlagValues()
    for name in flags.FLAGS:
        if name in main_lib._OVERRIDES or name == "config":
            fv[name] = flags.FLAGS[name]
    fv.unparse_flags()
    fv(["prog", *argv])
    return fv


def test_default_is_digits_cpu():
    cfg = main_lib.build_config(_flags())
    assert cfg == config_lib.digits_cpu()
    check_config(cfg)


def test_dataset_picks_its_preset_and_flags_override():
    cfg = main_lib.build_config(_flags("--dataset=svhn", "--budget=medium", "--seeds=0,1,2"))
    assert cfg.preset == "svhn" and cfg.train.milestones == (80,) and cfg.train.epochs == 100
    assert cfg.budget == "medium" and cfg.seeds == (0, 1, 2)
    assert cfg.use_warm_start


def test_every_config_field_has_one_typed_flag():
    """The flags are derived from Config (experiments.main._define_config_flags): each field
    but the preset and the training stages has one, under its own name (--method for
    methods), parsed to its type; each training stage setting has the flag of TRAIN_FLAGS."""
    stages = set(config_lib.STAGES)
    fields = {f.name for f in dataclasses.fields(config_lib.Config)} - {"preset"} - stages
    flag_names = {config_lib.FLAG_NAMES.get(f, f) for f in fields} | set(config_lib.TRAIN_FLAGS)
    assert set(main_lib._OVERRIDES) == flag_names
    assert set(config_lib.FLAG_HELP) == fields | set(config_lib.TRAIN_FLAGS)
    for stage_names, field in config_lib.TRAIN_FLAGS.values():
        assert set(stage_names) <= stages and field in config_lib.TrainSettings._fields
    cfg = main_lib.build_config(
        _flags(
            "--method=bal,random",
            "--data_seed=3",
            "--drop_classes=a,b",
            "--nowarm_start",
            "--fractions=0.1,0.2",
            "--milestones=3,5",
            "--beta=1.5",
            "--lr=0.01",
            "--recipe=small_data",
        )
    )
    assert cfg.methods == ("bal", "random") and cfg.data_seed == 3
    assert cfg.drop_classes == ("a", "b") and cfg.warm_start is False
    assert cfg.fractions == (0.1, 0.2) and cfg.train.milestones == (3, 5)
    assert (cfg.beta, cfg.train.learning_rate) == (1.5, 0.01)
    assert cfg.train.recipe == config_lib.RECIPES["small_data"]


def test_large_budget_trains_from_scratch():
    assert not dataclasses.replace(config_lib.Config(), budget="large").use_warm_start


@pytest.mark.parametrize("name", sorted(config_lib.PRESETS))
def test_presets_are_valid(name):
    check_config(config_lib.PRESETS[name]())


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"methods": ("bal", "magic")}, "unknown method 'magic'"),
        ({"methods": ()}, "at least one method"),
        ({"methods": ("bal", "bal")}, "twice"),
        ({"fractions": (0.1, 0.05)}, "increasing"),
        ({"fractions": (0.5, 1.5)}, r"\(0, 1\]"),
        ({"budget": "huge"}, "unknown budget"),
        ({"width": 0.0}, "width"),
        ({"epochs": 0}, "epochs"),
        ({"beta": -1.0}, "beta"),
        ({"indicator": "x"}, "indicator"),
        ({"beta_search_cycles": 9}, r"beta_search_cycles must be in \[1, 5\]"),
        ({"beta_search_cycles": 0, "beta": 1.0}, "--beta_search_cycles must be at least 1"),
        # Issue 13 item 11/12: refused before any training, never silently replaced.
        ({"beta_grid": (0.0, -1.0)}, "--beta_grid=0,-1 must hold positive values only"),
        ({"beta_grid": ()}, "at least one candidate"),
        ({"num_clusters": 0}, "--num_clusters=0 must be at least 2"),
        ({"num_clusters": 1}, "--num_clusters=1 must be at least 2"),
        ({"kmeans_n_init": 0}, "kmeans_n_init"),
        ({"augment": "mirror"}, "--augment must be one of"),
        ({"pretext_feature": "sideways"}, "--pretext_feature"),
        ({"fractions_of": "test"}, "--fractions_of"),
        ({"beta_search_fraction": 0.0}, "beta_search_fraction"),
        ({"window_budget": 0}, "window_budget"),
        ({"resplit_test_fraction": 1.0}, "resplit_test_fraction"),
    ],
)
def test_bad_config(changes, match):
    with pytest.raises(ConfigError, match=match):
        check_config(config_lib.override(config_lib.Config(), **changes))


@pytest.mark.parametrize(
    "changes",
    [dict(beta=1.0), dict(methods=("random",)), dict(subpools="uniform")],
)
def test_search_cycles_past_the_budget_only_matter_where_beta_is_searched(changes):
    # cifar10_cpu searches beta on 2 cycles; a one-cycle budget that searches nothing runs.
    one_cycle = config_lib.override(config_lib.cifar10_cpu(), fractions=(0.1,))
    assert one_cycle.beta_search_cycles == 2
    with pytest.raises(ConfigError, match=r"beta_search_cycles must be in \[1, 1\]"):
        check_config(one_cycle)
    check_config(config_lib.override(one_cycle, **changes))


def test_the_summary_describes_the_beta_search_only_where_one_runs():
    from experiments.pipeline import _beta_line
    from experiments.plan import make_plan

    def line(fractions=(0.1,), **changes):
        c = config_lib.override(config_lib.cifar10_cpu(), fractions=fractions, **changes)
        check_config(c)
        plan = make_plan(c, pool_size=1000, val_size=100, num_classes=10)
        return _beta_line(c, plan, pool_size=1000)

    assert line(beta_search_cycles=1).startswith("Beta search: 1 cycles per candidate (10% ")
    assert line(beta=1.5) == "Beta: 1.5 (--beta), no search."
    assert line(methods=("random",)).startswith("No beta:")
    # bal_switch below its switch is TypiClust throughout: nothing searched, and it says so.
    switch = dict(fractions=(0.1, 0.2), beta_search_cycles=1)
    assert line(methods=("bal_switch", "random"), switch_fraction=0.5, **switch) == (
        "No beta searched: every cycle starts below --switch_fraction=0.5 of the pool, where "
        "bal_switch need none."
    )
    # Past its switch (the second cycle starts at 10 %) it needs a beta, searched.
    assert line(methods=("bal_switch",), switch_fraction=0.05, **switch).startswith(
        "Beta search: 1 cycles"
    )


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--seeds=a", "--seeds must be comma-separated integers, got 'a'"),
        ("--seeds=0,1.5", "--seeds must be comma-separated integers, got '0,1.5'"),
        ("--beta_grid=1,x", "--beta_grid must be comma-separated numbers, got '1,x'"),
    ],
)
def test_bad_flag_value_says_what_is_expected(flag, message):
    with pytest.raises(ConfigError) as e:
        main_lib.build_config(_flags(flag))
    assert str(e.value) == message


def test_linear_head_workdirs_ignore_warm_start():
    """The linear head is refitted from nothing every cycle: a preset's warm_start (the
    cifar10_cpu preset changed it) must not orphan a linear-head workdir; a VGG's it must."""
    linear = dataclasses.replace(config_lib.cifar10_cpu(), pretext="patches", classifier="linear")
    for warm in (None, True, False):
        assert dataclasses.replace(linear, warm_start=warm).fingerprint() == linear.fingerprint()
    vgg = config_lib.cifar10_cpu()
    assert dataclasses.replace(vgg, warm_start=True).fingerprint() != vgg.fingerprint()


def test_fingerprint_ignores_methods_and_seeds():
    a = config_lib.Config()
    b = dataclasses.replace(a, methods=("random",), seeds=(4,))
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != config_lib.override(a, epochs=3).fingerprint()


@pytest.mark.parametrize(
    ("preset", "augment"),
    [
        ("digits_cpu", "crop"),  # a mirrored digit is another glyph
        ("svhn", "crop"),  # house numbers: digits too (the released code flipped them)
        ("cifar10", "crop_flip"),  # the released code's CIFAR transforms
        ("cifar10_cpu", "crop_flip"),
        ("caltech101", "crop_flip"),
        ("tiny_imagenet", "crop_flip"),
    ],
)
def test_augmentation_is_a_documented_preset_choice(preset, augment):
    cfg = config_lib.PRESETS[preset]()
    assert cfg.train.augment == cfg.pretext_train.augment == augment


def test_caltech101_preset_uses_the_papers_split():
    cfg = config_lib.caltech101()
    assert cfg.drop_classes == ("background_google",) and cfg.resplit_test_fraction == 0.1


def test_new_flags_reach_the_config():
    cfg = main_lib.build_config(
        _flags(
            "--augment=none",
            "--kmeans_n_init=3",
            "--pretext_feature=random_rotation",
            "--nopt4al_normalize_logits",
            "--window_budget=7",
            "--fractions_of=train",
            "--drop_classes=a,b",
            "--resplit_test_fraction=0.2",
            "--beta_search_fraction=0.2",
        )
    )
    assert (cfg.train.augment, cfg.kmeans_n_init) == ("none", 3)
    assert cfg.pretext_feature == "random_rotation"
    assert not cfg.pt4al_normalize_logits and cfg.window_budget == 7
    assert cfg.fractions_of == "train" and cfg.drop_classes == ("a", "b")
    assert cfg.resplit_test_fraction == 0.2 and cfg.beta_search_fraction == 0.2
    check_config(cfg)


def test_dtype_and_steps_per_dispatch_flags():
    cfg = main_lib.build_config(_flags("--dtype=bfloat16", "--steps_per_dispatch=4"))
    assert cfg.train.dtype == "bfloat16" and cfg.train.steps_per_dispatch == 4
    check_config(cfg)
    fp = cfg.fingerprint()
    assert fp["dtype"] == "bfloat16" and fp["steps_per_dispatch"] == 4
    # At their defaults they stay out of the fingerprint: older workdirs still match.
    assert "dtype" not in config_lib.Config().fingerprint()
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        check_config(config_lib.override(config_lib.Config(), dtype="float16"))
    with pytest.raises(ConfigError, match="--steps_per_dispatch"):
        check_config(config_lib.override(config_lib.Config(), steps_per_dispatch=0))


def test_pretext_settings_swap_in_the_simclr_rate():
    c = config_lib.cifar10_cpu()
    assert config_lib.pretext_settings(c) == c.pretext_train
    assert c.pretext_train.learning_rate == config_lib.flag_value(c, "pretext_lr") == 0.1
    # SimCLR trains with Adam at its own rate.
    simclr = config_lib.pretext_settings(dataclasses.replace(c, pretext="simclr"))
    assert simclr == c.pretext_train._replace(learning_rate=c.simclr_lr)
    assert c.simclr_lr != c.pretext_train.learning_rate


def test_shared_flags_set_both_stages_and_the_others_one():
    cfg = main_lib.build_config(
        _flags(
            "--config=cifar10",
            "--augment=none",
            "--eval_batch_size=64",
            "--dtype=bfloat16",
            "--steps_per_dispatch=2",
            "--epochs=7",
            "--batch_size=32",
            "--lr=0.02",
            "--milestones=5",
            "--pretext_epochs=3",
            "--pretext_batch_size=16",
            "--pretext_lr=0.3",
            "--pretext_milestones=2",
        )
    )
    shared = dict(augment="none", eval_batch_size=64, dtype="bfloat16", steps_per_dispatch=2)
    assert cfg.train == config_lib.TrainSettings(
        epochs=7, batch_size=32, learning_rate=0.02, milestones=(5,), **shared
    )
    assert cfg.pretext_train == config_lib.TrainSettings(
        epochs=3, batch_size=16, learning_rate=0.3, milestones=(2,), **shared
    )
    check_config(cfg)
    # Programmatic configs whose stages part on a shared setting are refused.
    parted = dataclasses.replace(cfg, pretext_train=cfg.pretext_train._replace(dtype="float32"))
    with pytest.raises(ConfigError, match="--dtype sets both training stages"):
        check_config(parted)


def test_recipe_flag_sets_the_main_stage_only():
    cfg = main_lib.build_config(_flags("--config=cifar10", "--recipe=small_data"))
    assert cfg.train.recipe == config_lib.RECIPES["small_data"]
    assert cfg.pretext_train.recipe == config_lib.RECIPES["paper"]
    assert config_lib.flag_value(cfg, "recipe") == cfg.fingerprint()["recipe"] == "small_data"
    assert config_lib.override(cfg, recipe="paper").train.recipe == config_lib.RECIPES["paper"]
    with pytest.raises(ConfigError) as e:
        main_lib.build_config(_flags("--recipe=fast"))
    assert str(e.value) == "--recipe must be one of paper, small_data, got 'fast'"


def test_override_takes_flag_names_and_refuses_others():
    c = config_lib.override(config_lib.Config(), method=("random",), lr=0.2, budget="medium")
    assert c.methods == ("random",) and c.train.learning_rate == 0.2 and c.budget == "medium"
    assert config_lib.override(c, methods=("bal",)).methods == ("bal",)
    assert config_lib.flag_value(c, "method") == ("random",)
    with pytest.raises(TypeError, match=r"'epoch', which is no flag.*did you mean 'epochs'"):
        config_lib.override(c, epoch=3)
    with pytest.raises(TypeError, match="'learning_rate'"):  # a TrainSettings field, no flag
        config_lib.override(c, learning_rate=0.1)


# cifar10_cpu's workdir fingerprint, as written to config.json since before the training
# stages were TrainSettings (runs/cifar10_cpu_* were bound to it): flat, under the flag names.
# A change here orphans every existing workdir of the preset: add new settings to
# Config.fingerprint's left-out-at-their-default list instead.
CIFAR10_CPU_FINGERPRINT = {
    "augment": "crop_flip",
    "bal_sampler": "confidence",
    "batch_size": 64,
    "beta": None,
    "beta_grid": [0.5, 1.0, 2.0],
    "beta_search_cycles": 2,
    "beta_search_fraction": 0.15,
    "budget": "small",
    "cdd_order": "ascending",
    "data_dir": None,
    "data_seed": 0,
    "dataset": "folder:../shared/datasets/cifar10-jpg.tar.gz",
    "drop_classes": [],
    "epochs": 20,
    "eval_batch_size": 512,
    "feature_layer": "final",
    "fractions": None,
    "fractions_of": "pool",
    "image_size": None,
    "indicator": "cdd",
    "kmeans_n_init": 10,
    "lr": 0.05,
    "milestones": [15],
    "normalize_logits": False,
    "num_clusters": None,
    "pretext": "rotation",
    "pretext_batch_size": 128,
    "pretext_epochs": 10,
    "pretext_feature": "upright",
    "pretext_lr": 0.1,
    "pretext_milestones": [7],
    "pretext_seed": None,
    "pt4al_normalize_logits": True,
    "recipe": "small_data",
    "resplit_test_fraction": None,
    "simclr_lr": 0.001,
    "subpools": "adaptive",
    "test_subset": None,
    "train_subset": 11000,
    "val_size": 1000,
    "warm_start": False,
    "width": 0.125,
    "window_budget": None,
    "window_variant": "paper",
}


def test_fingerprint_is_flat_and_unchanged():
    assert config_lib.cifar10_cpu().fingerprint() == CIFAR10_CPU_FINGERPRINT
    fp = main_lib.build_config(_flags("--config=cifar10", "--pretext_lr=0.01")).fingerprint()
    assert (fp["epochs"], fp["lr"], fp["milestones"], fp["recipe"]) == (
        100,
        0.1,
        [30, 60, 90],
        "paper",
    )
    assert (fp["pretext_epochs"], fp["pretext_lr"], fp["pretext_batch_size"]) == (120, 0.01, 256)
    assert "train" not in fp and "pretext_train" not in fp
    # Stage settings without a flag enter the fingerprint only when changed.
    c = config_lib.cifar10_cpu()
    assert "momentum" not in fp and "pretext_recipe" not in fp
    heavy = c.train._replace(momentum=0.8)
    assert dataclasses.replace(c, train=heavy).fingerprint() == {
        **CIFAR10_CPU_FINGERPRINT,
        "momentum": 0.8,
    }
    cosine = c.pretext_train._replace(recipe=config_lib.RECIPES["small_data"])
    assert dataclasses.replace(c, pretext_train=cosine).fingerprint()["pretext_recipe"] == (
        "small_data"
    )
    custom = c.train._replace(recipe=config_lib.RECIPES["small_data"]._replace(min_steps=7))
    fp = dataclasses.replace(c, train=custom).fingerprint()
    assert fp["recipe"] == {**config_lib.RECIPES["small_data"]._asdict(), "min_steps": 7}
