"""`python tests/emulated_nvml_main.py <sv_jax.main flags>`: sv_jax.main over an emulated NVML, for subprocess tests.

EMULATED_NVML_W lists the boards' constant power in W, one board per value ('100,50'); EMULATED_NVML_STUCK names
boards whose energy counter is stuck ('1'); EMULATED_NVML_NO_RAPL=1 hides RAPL. The emulation runs on the real clock, so the run's windows see the
planted power for as long as they last.
"""

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # emulated_nvml
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository

from emulated_nvml import Board, EmulatedNvml, installed  # noqa: E402


def boards_from_env() -> list:
    stuck = {int(i) for i in os.environ.get("EMULATED_NVML_STUCK", "").split(",") if i}
    return [Board(i, power_w=float(w), stuck_counter=i in stuck)
            for i, w in enumerate(os.environ["EMULATED_NVML_W"].split(","))]


if __name__ == "__main__":
    if os.environ.get("EMULATED_NVML_NO_RAPL"):  # the planted boards alone, also on a machine with RAPL
        from profiling import sensors
        sensors.RAPL_ROOT = "/nonexistent/powercap"
    with installed(EmulatedNvml(boards_from_env())):
        sys.argv[0] = "sv_jax.main"
        runpy.run_module("sv_jax.main", run_name="__main__", alter_sys=True)
