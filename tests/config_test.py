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
    assert cfg.preset == "svhn" and cfg.milestones == (80,) and cfg.epochs == 100
    assert cfg.budget == "medium" and cfg.seeds == (0, 1, 2)
    assert cfg.use_warm_start


def test_every_config_field_has_one_typed_flag():
    """The flags are derived from Config (experiments.main._define_config_flags): each field
    but the preset has one, under its own name (--method for methods), parsed to its type."""
    fields = {f.name for f in dataclasses.fields(config_lib.Config)} - {"preset"}
    assert {field for field, _ in main_lib._OVERRIDES.values()} == fields
    assert set(config_lib.FLAG_HELP) == fields
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
    assert cfg.fractions == (0.1, 0.2) and cfg.milestones == (3, 5)
    assert (cfg.beta, cfg.lr, cfg.recipe) == (1.5, 0.01, "small_data")


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
        check_config(dataclasses.replace(config_lib.Config(), **changes))


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
    assert a.fingerprint() != dataclasses.replace(a, epochs=3).fingerprint()


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
    assert config_lib.PRESETS[preset]().augment == augment


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
    assert (cfg.augment, cfg.kmeans_n_init, cfg.pretext_feature) == ("none", 3, "random_rotation")
    assert not cfg.pt4al_normalize_logits and cfg.window_budget == 7
    assert cfg.fractions_of == "train" and cfg.drop_classes == ("a", "b")
    assert cfg.resplit_test_fraction == 0.2 and cfg.beta_search_fraction == 0.2
    check_config(cfg)


def test_dtype_and_steps_per_dispatch_flags():
    cfg = main_lib.build_config(_flags("--dtype=bfloat16", "--steps_per_dispatch=4"))
    assert cfg.dtype == "bfloat16" and cfg.steps_per_dispatch == 4
    check_config(cfg)
    fp = cfg.fingerprint()
    assert fp["dtype"] == "bfloat16" and fp["steps_per_dispatch"] == 4
    # At their defaults they stay out of the fingerprint: older workdirs still match.
    assert "dtype" not in config_lib.Config().fingerprint()
    with pytest.raises(ConfigError, match="--dtype must be one of"):
        check_config(dataclasses.replace(config_lib.Config(), dtype="float16"))
    with pytest.raises(ConfigError, match="--steps_per_dispatch"):
        check_config(dataclasses.replace(config_lib.Config(), steps_per_dispatch=0))


def test_stage_settings_map_the_config_once():
    c = config_lib.cifar10_cpu()
    main = config_lib.main_settings(c)
    assert (main.epochs, main.batch_size, main.learning_rate, main.milestones) == (
        c.epochs,
        c.batch_size,
        c.lr,
        c.milestones,
    )
    assert main.recipe == config_lib.RECIPES[c.recipe] and main.augment == c.augment
    pretext = config_lib.pretext_settings(c)
    assert (pretext.epochs, pretext.batch_size, pretext.milestones) == (
        c.pretext_epochs,
        c.pretext_batch_size,
        c.pretext_milestones,
    )
    assert pretext.learning_rate == c.pretext_lr
    # SimCLR trains with Adam at its own rate.
    simclr = config_lib.pretext_settings(dataclasses.replace(c, pretext="simclr"))
    assert simclr.learning_rate == c.simclr_lr != c.pretext_lr
