"""Cost measurement for sv_jax runs: XLA FLOPs and memory, energy sensors, carbon (filled in by later work)."""
