"""profiling.study.memory_table: rows from compiled train steps, their arithmetic, the savings, the command line."""

import subprocess
import sys

from profiling.study import memory_table

ROOT = memory_table.__file__.rsplit("/profiling/", 1)[0]


def test_rows_add_up_and_reversible_and_8bit_forms_save_what_they_should():
    forms = [("none", 32), ("partial", 32), ("none", 8)]
    # Six blocks in stage 1, where the activations are: 'partial' makes five of them couplings.
    rows = memory_table.model_rows("demo_memory", batch_size=8, num_frames=100, forms=forms,
                                   model={"num_blocks": (6, 1, 1, 1)})
    assert [(r.reversible, r.state_bits) for r in rows] == forms
    for r in rows:
        assert r.grads_bytes == r.params_bytes and r.activation_bytes == r.xla_temp_bytes - r.grads_bytes
        assert r.total_bytes == r.params_bytes + r.batch_stats_bytes + r.optimizer_state_bytes + r.xla_temp_bytes
        assert r.saving == rows[0].total_bytes / r.total_bytes
    plain, partial, eight_bit = rows
    assert plain.saving == 1.0 and partial.activation_bytes < 0.5 * plain.activation_bytes
    assert eight_bit.optimizer_state_bytes < plain.optimizer_state_bytes / 2  # small tensors keep float32 states
    table = memory_table.markdown(rows)
    assert table.count("\n| ResNet |") == 3 and "the paper: up to 16.2x" in table


def test_unknown_model_is_one_line_and_exit_status_2():
    result = subprocess.run([sys.executable, "-m", "profiling.study.memory_table", "--models=r35"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--models: no config configs/r35.py" in result.stderr
    assert "Traceback" not in result.stderr
