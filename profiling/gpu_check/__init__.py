"""The GPU acceptance command: one run that says whether the project's figures hold on a real GPU node.

    python -m profiling.gpu_check --out=docs/gpu/2026-12-05       # at most 8 minutes on one H200

It checks, on in-memory random batches and without TensorFlow: the device and driver; the reversible stages'
inversion and gradient parity on the GPU; the FLOP source of each program; ResNet34's train step at batch 128 and
256 in float32 and bfloat16 (utt/s, TFLOP/s, MFU, J/utt next to Zeus and an nvidia-smi power log of the same
window); a depth sweep ResNet18..101 with the J-vs-FLOPs fit; ResNet293's peak memory plain, reversible and with
8-bit optimizer states. `plans` says what each part runs and the seconds it may take (the budget table), `checks`
runs the parts, `parity` holds the reversible checks, `power` the two references for the energy windows (Zeus and
nvidia-smi), and `report` writes the JSON and markdown reports and decides what failed; it needs no jax, so it can
be fed canned results. Without a GPU the command stops with one line and exit status 2 (`--allow_cpu`, for tests,
runs a tiny version instead).

Like profiling.study, this package is the top layer of docs/design.md: it imports the trainer and the meters, and
nothing imports it.
"""
