"""One name per quantity: how summary keys, CSV columns and TensorBoard scalars are formed.

A quantity of a program is `<program>_<quantity>`: programs are `train_step` (one optimisation step over the global
batch) and `forward` (inference: the embedding of a batch), so `train_step_flops` is the FLOPs of one train step,
`train_step_flops_per_utt` the same per utterance, `forward_j_mean` the mean Joules of one forward call over the
measured windows. TensorBoard scalars are slash-grouped (`profile/train_step_gflops_per_utt`, `energy/j_per_utt`).
"""

from __future__ import annotations

TRAIN_STEP, FORWARD = "train_step", "forward"
PROGRAMS = (TRAIN_STEP, FORWARD)


def key(program: str, quantity: str) -> str:
    """'train_step', 'flops_per_utt' -> 'train_step_flops_per_utt' (a summary key or CSV column)."""
    if program not in PROGRAMS:
        raise ValueError(f"unknown program {program!r}; choose one of {list(PROGRAMS)}")
    return f"{program}_{quantity}"


def scalar(group: str, name: str) -> str:
    """'energy', 'j_per_utt' -> 'energy/j_per_utt' (a TensorBoard scalar)."""
    return f"{group}/{name}"
