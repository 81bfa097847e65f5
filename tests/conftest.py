"""Test setup: four fake CPU devices, set before anything imports jax; the tiny corpus every training test reads."""

import atexit
import os
import shutil
import tempfile

import pytest

# Four fake CPU devices. LLVM at -O0 for the CPU code: the tests' programs are tiny, so compiling them costs far more
# than running them (a tiny ResNet's jitted init: 9.7 s at the default level, 2.3 s at 0, on the 2-core dev VM).
# XLA's HLO passes, which the FLOP counts come from, are not affected.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA's convolutions for model.cpu_conv='auto': the tests' programs are tiny (oneDNN saves nothing there), and on
# several devices the oneDNN calls are custom-partitioned, which makes every process's compilation-cache key new.
# tests/test_cpu_conv.py and the reversible tests run the oneDNN convolutions explicitly.
os.environ.setdefault("SV_JAX_CPU_CONV", "xla")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One XLA compilation cache for this test run, which the runs started in subprocesses share too: the same tiny
# programs are compiled by dozens of runs and restarts, and compiling dominates their time (a tiny training run in a
# subprocess: 23.5 s without, 13.3 s with a warm cache, on the 2-core dev VM). It starts empty every run and is removed
# at the end, so every program is still compiled at least once per run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="sv_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


# The files that hold the longest tests (1.5-2 min each on the 2-core dev VM) run first, each file's tests kept
# together (their module fixtures are built once), so that the two workers of `pytest -n auto --dist worksteal`
# finish together instead of one of them running these at the end alone.
LONGEST_FIRST = ("test_distributed.py", "test_faults.py", "test_memory_efficient_training.py", "test_study.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.nodeid.split("::")[0].rsplit("/", 1)[-1] not in LONGEST_FIRST)


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory):
    """configs/tiny.py's synthetic corpus, generated once for the whole run (tests that damage files copy it)."""
    from configs import tiny
    from data_pipeline import synthetic
    root = tmp_path_factory.mktemp("corpus") / "synthetic"
    synthetic.generate_corpus(root, synthetic.spec_from_config(tiny.get_config().data), num_workers=1)
    return root
