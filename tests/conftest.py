"""Shared pytest setup: strict rank promotion, as the house style asks."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
