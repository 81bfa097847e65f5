"""Meters for any JAX program: energy sensors and windows, carbon, device peaks, XLA cost and memory, MAC counts.

    from profiling import energy, xla_cost, macs
    with energy.EnergyMonitor() as monitor:            # NVML GPUs and RAPL where readable; reasons where not
        monitor.begin_window("step", sync=x)
        y = f(x)
        m = monitor.end_window("step", sync=y)         # m.gpu_j, m.cpu_j, m.sources, m.warnings
    cost = xla_cost.compiled_cost(jax.jit(f).lower(x).compile())   # ProgramCost: flops, bytes_accessed
    count = macs.count_macs(f, x)                      # multiply-adds of the traced program

These modules import jax, numpy and the standard library only, never sv_jax or data_pipeline (the lowest layer of
docs/design.md). The study that uses them together with the trainer lives in profiling.study.
"""
