"""Training with 8-bit optimizer states and a reversible ResNet end to end: checkpoints hold uint8 states, and a
run resumed from an intermediate checkpoint ends with the uninterrupted run's parameters."""

import json
import shutil

import jax
import numpy as np
import pytest

from configs import tiny
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import train
from sv_jax.models import cpu_conv

# 'full' on oneDNN, the CPU default, where it builds (else XLA's: the test still runs): in its stages XLA's
# input-gradient convolutions are emitted loops, which the suite's -O0 (tests/conftest.py) makes 670 ms a step
# against oneDNN's 70 ms (4 devices, 2-core Xeon); 'partial', with an ordinary block per stage, on XLA's.
FULL_LOWERING = "xla" if cpu_conv.unavailable_reason() else "onednn"


@pytest.mark.parametrize("optimizer, reversible, lowering", [("sgd", "partial", "xla"),
                                                             ("adamw", "full", FULL_LOWERING)])
def test_8bit_reversible_run_resumes_from_a_checkpoint_to_the_same_parameters(corpus_root, tmp_path, optimizer,
                                                                              reversible, lowering):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    # One coupling per stage: 'partial' keeps each stage's first block ordinary, 'full' makes every block one.
    config.model.num_blocks = (2, 2, 2, 2) if reversible == "partial" else (1, 1, 1, 1)
    config.model.reversible = reversible
    config.model.cpu_conv = lowering
    config.optim.name = optimizer
    config.optim.state_bits = 8
    config.train.num_epochs = 3  # 9 steps (of tiny's 3 per epoch): the margin ramp included, fewer slow -O0 steps
    config.train.keep_checkpoints = 10  # steps 3, 6, 9
    straight = tmp_path / "straight"
    summary = train.train_and_evaluate(config, str(straight))
    assert summary["steps"] == 9 and np.isfinite(summary["train"]["loss"])

    checkpointer = checkpoint_lib.Checkpointer(straight)
    raw = checkpointer.restore_raw(9)
    dtypes = {np.asarray(leaf).dtype for leaf in jax.tree_util.tree_leaves(raw["opt_state"])}
    assert np.dtype(np.uint8) in dtypes, f"no uint8 optimizer state in the checkpoint: {dtypes}"

    # A run stopped after step 6: same workdir content up to there; rerunning resumes and continues the stream.
    stopped = tmp_path / "stopped"
    shutil.copytree(straight, stopped)
    shutil.rmtree(stopped / "checkpoints" / "9")
    (stopped / "summary.json").unlink()
    summary = train.train_and_evaluate(config, str(stopped))
    assert summary["resumed_from_step"] == 6 and summary["steps"] == 9
    resumed = checkpoint_lib.Checkpointer(stopped).restore_raw(9)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           resumed["params"], raw["params"])
    assert json.loads((stopped / "summary.json").read_text())["steps"] == 9
