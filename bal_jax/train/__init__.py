"""Training and pool inference for bal_jax networks: jitted, device-resident and reproducible.

Usage::

  key = jax.random.key(0)
  pretext_key, main_key = jax.random.split(key)
  rot = rotation_net(width=0.25, rngs=nnx.Rngs(1))
  fit_rotation(pretext_key, rot, pool_u8, epochs=120, batch_size=256, learning_rate=0.1,
               milestones=(30, 60, 90), mean=MEAN, std=STD)                    # SPEC Step 1
  feats_ND = predict(rot, pool_u8, batch_size=512, mean=MEAN, std=STD).features_ND  # Step 2
  model = VGG16(10, width=0.25, rngs=nnx.Rngs(2))
  metrics = fit(main_key, model, x_u8, y, epochs=100, batch_size=128, learning_rate=0.1,
                milestones=(30, 60, 90), mean=MEAN, std=STD)                  # Step 6
  acc = evaluate(model, test_u8, test_y, batch_size=512, mean=MEAN, std=STD)

Modules, one concept each:
  augment    normalisation, random crop + flip, rotation views (inside jit)
  optim      SGD with coupled weight decay; multistep and warm-up + cosine schedules
  recipe     ``Recipe``: the paper's main-task recipe and the small-data one
  step       the jitted training step and the per-epoch batch gather
  inputs     host-side checks, hyperparameter packing, device placement
  fit        ``fit`` / ``fit_rotation``
  inference  ``predict``, ``predict_mc_dropout``, ``rotation_losses``, ``evaluate``,
             ``predict_features`` (one layer's features)
  views      SimCLR's strong views (resized crop, flip, colour jitter, grey; inside jit)
  contrastive  ``ContrastiveNet``, ``nt_xent``, ``fit_contrastive`` (instance discrimination)
"""

from bal_jax.train.augment import CROP_PADDING as CROP_PADDING
from bal_jax.train.augment import NUM_ROTATIONS as NUM_ROTATIONS
from bal_jax.train.augment import normalize as normalize
from bal_jax.train.augment import random_crop_flip as random_crop_flip
from bal_jax.train.augment import rotations as rotations
from bal_jax.train.contrastive import ContrastiveNet as ContrastiveNet
from bal_jax.train.contrastive import fit_contrastive as fit_contrastive
from bal_jax.train.contrastive import nt_xent as nt_xent
from bal_jax.train.fit import fit as fit
from bal_jax.train.fit import fit_rotation as fit_rotation
from bal_jax.train.fit import steps_per_epoch as steps_per_epoch
from bal_jax.train.inference import Predictions as Predictions
from bal_jax.train.inference import evaluate as evaluate
from bal_jax.train.inference import predict as predict
from bal_jax.train.inference import predict_features as predict_features
from bal_jax.train.inference import predict_mc_dropout as predict_mc_dropout
from bal_jax.train.inference import rotation_losses as rotation_losses
from bal_jax.train.optim import MAX_MILESTONES as MAX_MILESTONES
from bal_jax.train.optim import make_optimizer as make_optimizer
from bal_jax.train.optim import make_schedule as make_schedule
from bal_jax.train.optim import multistep_schedule as multistep_schedule
from bal_jax.train.optim import warmup_cosine_schedule as warmup_cosine_schedule
from bal_jax.train.recipe import RECIPES as RECIPES
from bal_jax.train.recipe import Recipe as Recipe
from bal_jax.train.recipe import recipe_name as recipe_name
from bal_jax.train.step import TrainState as TrainState
from bal_jax.train.step import epoch_order as epoch_order
from bal_jax.train.step import take_batch as take_batch
from bal_jax.train.step import train_step as train_step
from bal_jax.train.views import ViewParams as ViewParams
from bal_jax.train.views import two_views as two_views
