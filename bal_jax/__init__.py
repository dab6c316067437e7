"""bal_jax: BAL (Balancing Diversity and Novelty for Active Learning, TPAMI 2023) in JAX.

    import bal_jax
    order = bal_jax.bal_order(key, feats_ND, num_clusters=10)           # CDD order, once
    picked = bal_jax.bal_select(key, order=order, labeled_mask=labeled_N, cycle=c,
                                num_cycles=5, k=1000, beta=1.2, probs=probs_NC)

Submodules: `kmeans`, `subpools`, `sampling` (uncertainty, random), `diversity` (Core-Set,
BADGE, TypiClust), `coverage` (ProbCover, MaxHerding), `methods`, `typical` (the
`bal_typical` variant), `features` (the feature stage: rotation, SimCLR, patches),
`patch_features` (k-means patch features, no network), `embeddings` (your own embeddings
files), `heads` and `learners` (the classifier step: VGG16 or a linear head), `keys` (every
random draw, model digests), `settings`, `diagnostics` (feature quality), `budgets`, `models`,
`train`, `data`, `parallel`, `precision`, `active_loop` (the cycles), `checkpoint`, `labeling`
(`LabelingProject`: label your own images round by round).
"""

from bal_jax import data as data
from bal_jax import diversity as diversity
from bal_jax import patch_features as patch_features
from bal_jax import sampling as sampling
from bal_jax import train as train
from bal_jax.budgets import budget_fractions as budget_fractions
from bal_jax.budgets import cycle_counts as cycle_counts
from bal_jax.diagnostics import kmeans_purity as kmeans_purity
from bal_jax.diagnostics import knn_accuracy as knn_accuracy
from bal_jax.kmeans import KMeansResult as KMeansResult
from bal_jax.kmeans import cdd as cdd
from bal_jax.kmeans import cdd_order as cdd_order
from bal_jax.kmeans import kmeans as kmeans
from bal_jax.kmeans import pairwise_sq_dists as pairwise_sq_dists
from bal_jax.labeling import LabelingError as LabelingError
from bal_jax.labeling import LabelingProject as LabelingProject
from bal_jax.labeling import ProjectConfig as ProjectConfig
from bal_jax.methods import METHODS as METHODS
from bal_jax.methods import BALOptions as BALOptions
from bal_jax.methods import bal_order as bal_order
from bal_jax.methods import bal_select as bal_select
from bal_jax.methods import needs_beta as needs_beta
from bal_jax.methods import select as select
from bal_jax.methods import switch_cycle as switch_cycle
from bal_jax.models import VGG16 as VGG16
from bal_jax.models import rotation_net as rotation_net
from bal_jax.parallel import make_mesh as make_mesh
from bal_jax.subpools import min_beta as min_beta
from bal_jax.subpools import subpool as subpool
from bal_jax.subpools import subpool_bounds as subpool_bounds
from bal_jax.train import Predictions as Predictions
from bal_jax.train import evaluate as evaluate
from bal_jax.train import fit as fit
from bal_jax.train import fit_rotation as fit_rotation
from bal_jax.train import predict as predict
from bal_jax.train import predict_mc_dropout as predict_mc_dropout
from bal_jax.train import rotation_losses as rotation_losses
from bal_jax.typical import bal_typical_select as bal_typical_select

__version__ = "0.1.0"
