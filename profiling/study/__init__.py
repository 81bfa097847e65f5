"""The compute–energy study: benchmarks, sweeps of model variants, the FLOP-vs-Joule analysis and its report.

The top layer of the house (docs/design.md): it imports the trainer (sv_jax: its programs, their checked costs,
its run profiler) and the meters (profiling: sensors, energy windows, carbon, XLA cost and memory readings), and
nothing imports it. Its command lines:

    python -m profiling.study run --sweep=configs/sweeps/depth.py --out=results/depth [--quick] [--train]
    python -m profiling.study analyze --out=results/depth
    python -m profiling.study.benchmark --config=configs/r34.py --batch_size=128
    python -m profiling.study.flops --config=configs/r34.py
    python -m profiling.study.memory --config=configs/r34.py
"""
