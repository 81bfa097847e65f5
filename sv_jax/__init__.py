"""sv_jax: speaker-verification ResNets in JAX/Flax, trained and evaluated with their cost measured."""
