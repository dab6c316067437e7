"""A labeling project's configuration and the choices it makes once, at `init`.

    config = ProjectConfig(classes=("cat", "dog"), per_round=200, rounds=5)
    bind(workdir, config.to_json(), images)       # refuses a folder made by another config
    classes, rows = folder_classes(images, ids, config.classes, labels_file)
    counts = round_counts(budget="small", per_round=None, rounds=None, pool_size=n, unlabeled=n)
    beta, why = choose_beta(None, budget="small", counts=counts, pool_size=n)

All raise `LabelingError` with one sentence, before any image is decoded.
"""

from __future__ import annotations

import dataclasses
import json
import os

from bal_jax.atomic import write_json
from bal_jax.budgets import BUDGETS, cycle_counts
from bal_jax.embeddings import FORMATS as EMBEDDING_FORMATS
from bal_jax.features import SIMCLR_LR
from bal_jax.labeling import formats
from bal_jax.methods import METHODS, bal_min_beta
from bal_jax.settings import TrainSettings
from bal_jax.train.recipe import RECIPES, Recipe

__all__ = [
    "PAPER_BETA",
    "LabelingError",
    "ProjectConfig",
    "bind",
    "choose_beta",
    "folder_classes",
    "round_counts",
]

# The released code's beta per budget (SPEC Step 4: small 0.5-1.0, medium 1.2-1.4, large
# 2.0-2.5), the middle of each range; used when there is no validation set to search on.
PAPER_BETA = {"small": 0.75, "medium": 1.3, "large": 2.25}
_MAX_LISTED = 5
# CPU-scale defaults (the cifar10_cpu preset's recipe); pass the paper's for GPU runs.
DEFAULT_PRETEXT = TrainSettings(epochs=10, batch_size=128, learning_rate=0.1, milestones=(7,))
# SimCLR trains with Adam (warm-up + cosine, no milestones): with --features=simclr the pretext
# settings default to these (the runner's --simclr_lr).
DEFAULT_SIMCLR_PRETEXT = TrainSettings(
    epochs=DEFAULT_PRETEXT.epochs, batch_size=DEFAULT_PRETEXT.batch_size, learning_rate=SIMCLR_LR
)
DEFAULT_MAIN = TrainSettings(
    epochs=20, batch_size=64, learning_rate=0.05, milestones=(15,), recipe=RECIPES["small_data"]
)


# Where a project's features come from: the paper's rotation network, SimCLR, k-means patch
# features (no network; bal_jax.patch_features), or a file of the user's own embeddings
# (bal_jax.embeddings), given as its path. The networks are the runner's own
# (bal_jax.features.train_pretext_network).
FEATURE_SOURCES = ("patches", "rotation", "simclr")
# Runner methods a project can pick with: PT4AL needs rotation losses and DBAL MC dropout,
# which a project does not compute.
LABELING_METHODS = tuple(m for m in METHODS if m not in ("pt4al", "dbal"))
CLASSIFIERS = ("linear", "vgg")
# The defaults are the measured best at low budgets on CIFAR-10 (see README, Labeling), each
# chosen on data that may choose it: a linear head on the patch features (its L2 by CV on the
# labels; 47 / 57 % test accuracy from 300 / 1,000 random labels against 31-46 % for a VGG16
# from scratch, experiments/reports/classifiers.md) and, with that head, bal_herding
# (MaxHerding's coverage below 10 % labeled, the paper's BAL after): in the small-budget run of
# experiments/reports/cifar10_cpu_linear (32-d selection features) the MaxHerding cold start
# then BAL had the best VALIDATION accuracy over the curve (53.3 %, MaxHerding 52.5 %, random
# 51.4 %; the test split only reports). bal_cover, measured later, is level on validation
# (53.32 vs 53.26 % small, 61.9 vs 61.7 % medium: within seed noise), so the default stays.
# The paper's setting: features='rotation', method='bal', classifier='vgg'.
DEFAULT_FEATURES, DEFAULT_METHOD, DEFAULT_CLASSIFIER = "patches", "bal_herding", "linear"
PAPER_SETTING = {"features": "rotation", "method": "bal", "classifier": "vgg"}


class LabelingError(ValueError):
    """Bad input to a labeling command, reported in one sentence before any work."""


@dataclasses.dataclass(frozen=True)
class ProjectConfig:
    """What a project's picks depend on; the project folder is bound to it at `create`.

    Attributes:
      image_size: side every image is resized to (a multiple of 32).
      classes: class names, or None to take them from DIR/<class>/ folders or a labels file.
      budget: 'small', 'medium' or 'large' (the paper's schedules), unless per_round is set.
      per_round, rounds: a custom budget of `rounds` rounds of `per_round` images.
      width: VGG16 channel multiplier.
      seed: every random draw derives from it.
      pretext, main: optimisation settings of the pretext network and the classifier
        (with features='simclr', pretext left at `DEFAULT_PRETEXT`, the rotation network's
        SGD settings, becomes `DEFAULT_SIMCLR_PRETEXT`: Adam at `SIMCLR_LR`).
      beta: balancing factor; None = the released code's value for the budget (PAPER_BETA).
      num_clusters: K-means K; None = the number of classes.
      cv_folds: folds of the cross-validated accuracy `status` reports (and of the linear
        head's L2 choice).
      features: 'patches', 'rotation', 'simclr' or the path of an embeddings file
        (`bal_jax.embeddings`).
      method: the selection method, one of LABELING_METHODS.
      classifier: 'linear' (a head on the features, `bal_jax.heads`) or 'vgg' (VGG16 trained
        from scratch on the images, the paper's).
    """

    image_size: int = 32
    classes: tuple[str, ...] | None = None
    budget: str = "small"
    per_round: int | None = None
    rounds: int | None = None
    width: float = 0.125
    seed: int = 0
    pretext: TrainSettings = DEFAULT_PRETEXT
    main: TrainSettings = DEFAULT_MAIN
    beta: float | None = None
    num_clusters: int | None = None
    cv_folds: int = 3
    features: str = DEFAULT_FEATURES
    method: str = DEFAULT_METHOD
    classifier: str = DEFAULT_CLASSIFIER

    @property
    def features_file(self) -> str | None:
        """The embeddings file, when the features are the user's own."""
        return None if self.features in FEATURE_SOURCES else self.features

    def __post_init__(self):
        if self.features == "simclr" and self.pretext == DEFAULT_PRETEXT:
            object.__setattr__(self, "pretext", DEFAULT_SIMCLR_PRETEXT)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["pretext"], d["main"] = settings_dict(self.pretext), settings_dict(self.main)
        return json.loads(json.dumps(d))

    @classmethod
    def from_json(cls, d: dict) -> ProjectConfig:
        d = dict(d)
        for name in ("pretext", "main"):
            s = dict(d[name])
            s["milestones"] = tuple(s["milestones"])
            if isinstance(s.get("recipe"), dict):
                s["recipe"] = Recipe(**s["recipe"])
            d[name] = TrainSettings(**s)
        if d["classes"] is not None:
            d["classes"] = tuple(d["classes"])
        # Projects made before these settings existed ran the paper's setting.
        return cls(**{**PAPER_SETTING, **d})

    def check(self) -> None:
        """Raises LabelingError on a value no data could make valid."""

        def need(ok, msg):
            if not ok:
                raise LabelingError(msg)

        need(self.image_size >= 32 and self.image_size % 32 == 0, "image_size must be 32, 64, ...")
        need((self.per_round is None) == (self.rounds is None), "give per_round with rounds")
        need(self.per_round is None or self.per_round >= 1, "per_round must be at least 1")
        need(self.rounds is None or self.rounds >= 1, "rounds must be at least 1")
        need(self.budget in BUDGETS, f"budget must be one of {sorted(BUDGETS)}")
        need(self.width > 0, "width must be positive")
        need(self.beta is None or self.beta > 0, "beta must be positive")
        need(self.cv_folds >= 2, "cv_folds must be at least 2")
        need(
            self.features in FEATURE_SOURCES
            or os.path.splitext(self.features)[1].lower() in EMBEDDING_FORMATS,
            f"--features must be one of {', '.join(FEATURE_SOURCES)} or an embeddings file "
            f"({', '.join(EMBEDDING_FORMATS)}), got {self.features!r}",
        )
        need(
            self.method in LABELING_METHODS,
            f"--method must be one of {', '.join(LABELING_METHODS)}, got {self.method!r}",
        )
        need(
            self.classifier in CLASSIFIERS,
            f"--classifier must be one of {', '.join(CLASSIFIERS)}, got {self.classifier!r}",
        )
        for stage, st in (("pretext_", self.pretext), ("", self.main)):
            need(st.epochs >= 1 and st.batch_size >= 1, f"--{stage}epochs and batch size >= 1")
            need(st.learning_rate > 0, f"--{stage}lr must be positive")
            ms = list(st.milestones)
            need(
                ms == sorted(set(ms)) and all(m > 0 for m in ms),
                f"--{stage}milestones must be strictly increasing positive epochs, got {ms}",
            )
        if self.classes is not None:
            need(len(self.classes) >= 2, "give at least two classes")
            need(len(set(self.classes)) == len(self.classes), "a class is listed twice")
            need(all(c.strip() == c and c for c in self.classes), "class names must be non-empty")


def setting_line(config: ProjectConfig) -> str:
    """What `init` says about the project's features, method and classifier, and why."""
    chosen = (config.features, config.method, config.classifier)
    paper = tuple(PAPER_SETTING[k] for k in ("features", "method", "classifier"))
    defaults = (DEFAULT_FEATURES, DEFAULT_METHOD, DEFAULT_CLASSIFIER)
    head = f"features {chosen[0]}, method {chosen[1]}, classifier {chosen[2]}"
    if chosen == defaults:
        return (
            f"{head}: the defaults, the best measured at low budgets (README 'Label your own "
            "images'; experiments/reports/cifar10_cpu_linear.md, classifiers.md); the paper's "
            "setting is --features=rotation --method=bal --classifier=vgg"
        )
    if chosen == paper:
        return f"{head}: the paper's setting (faithful BAL: rotation network, VGG16)"
    return f"{head} (chosen by flags)"


def settings_dict(settings: TrainSettings) -> dict:
    """A training recipe as a dict (a NamedTuple today; a dataclass works too)."""
    d = dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else settings._asdict()
    if isinstance(d.get("recipe"), Recipe):
        d["recipe"] = d["recipe"]._asdict()
    return d


def replace_settings(settings: TrainSettings, **changes) -> TrainSettings:
    """A copy of a training recipe with `changes` applied."""
    return TrainSettings(**{**settings_dict(settings), **changes})


def listed(items, n: int = _MAX_LISTED) -> str:
    """'a, b, c and 4 more'."""
    items = list(items)
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(str(i) for i in items[:n]) + more


def bind(workdir: str, config_json: dict, images: str) -> None:
    """Creates the project folder bound to (configuration, images folder), or checks it.

    Raises:
      LabelingError: the folder was made with another configuration or images folder.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if old != config_json:
            keys = set(old) | set(config_json)
            diff = sorted(k for k in keys if old.get(k) != config_json.get(k))
            raise LabelingError(
                f"project {workdir} was made by a different configuration (differs in: "
                f"{', '.join(diff)}); use another --workdir or the same settings"
            )
        state = os.path.join(workdir, "state.json")
        if os.path.exists(state):
            with open(state) as f:
                bound = json.load(f)["images"]
            if bound != images:
                raise LabelingError(f"project {workdir} labels {bound}, not {images}")
        return
    os.makedirs(workdir, exist_ok=True)
    write_json(path, config_json)


def folder_classes(
    images: str, ids: list[str], classes: tuple[str, ...] | None, labels: str | None
) -> tuple[list[str], list[tuple[str, tuple[str, str], str]]]:
    """The project's classes and the labels its DIR/<class>/ folders give.

    Without `classes`, they are the labels file's classes, else the top-level folder names.
    With `classes`, top-level folders named after a class hold labeled images; a folder
    tree that names classes and other things too disagrees with the list.

    Returns:
      (classes, rows of (where, ("id", id), class) for the images in class folders).
    """
    top = sorted({i.split("/", 1)[0] for i in ids if "/" in i})
    if classes is None:
        if labels:
            try:
                rows = formats.read_labels(labels).rows
            except formats.LabelFileError as e:
                raise LabelingError(str(e)) from None
            classes = tuple(sorted({lab for _, _, lab in rows if lab}))
            top = [t for t in top if t in classes]
        elif top:
            classes = tuple(top)
        else:
            raise LabelingError(
                f"no classes known: pass --classes=a,b,c, or put images in {images}/<class>/ "
                "folders, or give --labels"
            )
        if len(classes) < 2:
            raise LabelingError(f"a project needs at least two classes, found {list(classes)}")
    else:
        named = [t for t in top if t in classes]
        other = [t for t in top if t not in classes]
        if named and other:
            raise LabelingError(
                f"{images} has class folders {listed(named)} but also {listed(other)}, which "
                "are not in --classes; add them to --classes or move those images"
            )
        top = named
    rows = [(i, ("id", i), i.split("/", 1)[0]) for i in ids if "/" in i and i.split("/")[0] in top]
    return list(classes), rows


def round_counts(
    *, budget: str, per_round: int | None, rounds: int | None, pool_size: int, unlabeled: int
) -> tuple[int, ...]:
    """Images per round: `rounds` x `per_round`, or the budget's fractions of the pool."""
    if per_round is not None:
        counts = (per_round,) * rounds
    else:
        try:
            counts = cycle_counts(BUDGETS[budget], pool_size=pool_size)
        except ValueError as e:
            raise LabelingError(str(e)) from None
    if counts[0] > unlabeled:
        raise LabelingError(
            f"the pool has {unlabeled} unlabeled readable images, fewer than one round of "
            f"{counts[0]}"
        )
    if sum(counts) > unlabeled:
        raise LabelingError(
            f"the budget ({len(counts)} rounds, {sum(counts)} images) exceeds the "
            f"{unlabeled} unlabeled readable images"
        )
    return counts


def choose_beta(
    beta: float | None, *, budget: str | None, counts, pool_size: int
) -> tuple[float, str]:
    """(beta, where it came from): `beta` if given, else the released code's per-budget value.

    Args:
      beta: the user's value, or None.
      budget: the named budget, or None for a custom one (named by its final fraction).
      counts: images per round.
      pool_size: N.
    """
    lowest = bal_min_beta(counts, pool_size=pool_size)
    if beta is not None:
        if beta < lowest:
            raise LabelingError(f"--beta={beta} is below its minimum {lowest:.4g} (k*C/N)")
        return beta, "given by --beta"
    if budget is None:
        final = sum(counts) / pool_size
        budget = "small" if final <= 0.10 else "medium" if final <= 0.40 else "large"
    value = PAPER_BETA[budget]
    source = (
        f"the released code's value for the {budget} budget, as there is no labeled "
        "validation set to search on; --beta overrides it"
    )
    if value < lowest:
        value, source = lowest, source + f"; raised to the minimum k*C/N = {lowest:.4g}"
    return value, source


def unreadable_message(unreadable: list[tuple[str, str]]) -> str | None:
    """One line naming the unreadable images (skipped), or None."""
    if not unreadable:
        return None
    shown = listed([f"{i} ({why})" for i, why in unreadable], 10)
    return f"skipped {len(unreadable)} unreadable image(s): {shown}"
