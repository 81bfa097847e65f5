"""Analytic multiply-adds (MACs) of one clip through a tagging model, layer by layer from its attributes.

Why a closed form here, when the ResNets' count is read from their traced program (sv_jax.models.macs): the
tagging families are few and regular, so a formula per family states the cost the way papers and the DCASE
baseline's README do (convolutions, GLU, GRU, dense, head), and it is checked two ways in
tests/test_tagging_models.py: equal, to the MAC, to profiling.macs' count of the traced forward, and within a few
percent of XLA's compiled FLOP count over 2.

What is counted, per clip of T frames x F bins:
- a convolution: output positions x kernel taps x input channels x output channels, with the taps of
  profiling.macs.conv_taps: 'real' (only those landing on the input, not its zero padding: XLA's count) or 'full'
  (every tap: THOP's, the convention of the DCASE figure);
- a Dense layer: positions x inputs x outputs (the GLU's channel-mixing Linear included);
- a GRU: per step and direction 3 gates x (input -> hidden + hidden -> hidden) matrix products, over every frame;
- the head: the frame Dense, and the attention Dense where the pooling has one.
Elementwise work (biases, BN, ReLU, GLU's and the GRU gates' sigmoids and products, average pooling, the softmax
and log-sum-exp of the pooling, the input scaling) is not counted, as for the ResNets: it is no multiply-add.
XLA counts it, so its FLOPs are 2 x these MACs and a little more: at the families' default sizes and 626 x 128,
MLP 0.9%, CNN 0.6%, RNN 1.0%, CRNN 1.8% more (CPU, jax 0.10.2).
XLA counts a loop's body once, not once per iteration (a GRU's recurrent products, in the lax.scan it trains with,
come out at 1/T of theirs), so XLA's count is taken on `create_tagging_model(..., for_counting=True)`, whose GRU
scans are unrolled.

The DCASE task-4 CRNN at its recipe's input (626 frames x 128 mels, 10 classes) is 917,553,152 MACs 'full' (858,415,488
'real'). The baseline's README gives 930.902 M, counted by THOP, which also counts 4 operations per BN element, 1 per
average pooling output, its GRU's bias adds and gate products and the softmax: 13,348,780 more (1.4%), 930,901,932 in
all (the parity test adds them up).
"""

from __future__ import annotations

from profiling import macs as macs_lib
from sv_jax.tagging import models

CONVENTIONS = macs_lib.CONVENTIONS


def forward_macs(model_config, num_classes: int, num_frames: int, num_mel_bins: int,
                 convention: str = "real") -> int:
    """MACs of one clip through the model that `model_config` describes (sv_jax.tagging.create_tagging_model)."""
    model = models.create_tagging_model(model_config, num_classes)
    return sum(macs_by_part(model, num_frames, num_mel_bins, convention).values())


def macs_by_part(model, num_frames: int, num_mel_bins: int, convention: str = "real") -> dict[str, int]:
    """MACs of one clip through a built tagging model, per part: 'dense' (MLP), 'conv', 'glu', 'gru', 'head'."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")
    if isinstance(model, models.MLPTagger):
        sizes = (num_mel_bins, *model.hidden_sizes)
        dense = num_frames * sum(a * b for a, b in zip(sizes, sizes[1:]))
        return {"dense": dense, "head": _head(model, num_frames, sizes[-1])}
    if isinstance(model, models.RNNTagger):
        gru = _gru(num_frames, num_mel_bins, model.rnn_hidden_size, model.rnn_layers)
        return {"gru": gru, "head": _head(model, num_frames, 2 * model.rnn_hidden_size)}
    if isinstance(model, models.CNNTagger):
        conv, _, frames, bins = _conv_blocks(model, num_frames, num_mel_bins, convention, convs_per_block=2)
        return {"conv": conv, "head": _head(model, frames, model.channels[-1])}
    if isinstance(model, models.CRNNTagger):
        conv, glu, frames, bins = _conv_blocks(model, num_frames, num_mel_bins, convention, convs_per_block=1,
                                               glu=True)
        gru = _gru(frames, model.channels[-1] * bins, model.rnn_hidden_size, model.rnn_layers)
        return {"conv": conv, "glu": glu, "gru": gru, "head": _head(model, frames, 2 * model.rnn_hidden_size)}
    raise TypeError(f"not a tagging model: {type(model).__name__}; one of {list(models.FAMILIES)}")


def _conv_blocks(model, frames: int, bins: int, convention: str, convs_per_block: int,
                 glu: bool = False) -> tuple[int, int, int, int]:
    """(conv MACs, GLU MACs, frames, bins out) of a model's conv blocks: `convs_per_block` 3x3 convolutions (padding
    1) to the block's channels, with `glu` a channels x channels Linear at every position, then average pooling
    over (time, frequency)."""
    conv = glu_macs = 0
    channels = 1
    for width, (time_pool, freq_pool) in zip(model.channels, model.pool_sizes):
        taps = (macs_lib.conv_taps(frames, 3, 1, (1, 1), convention)
                * macs_lib.conv_taps(bins, 3, 1, (1, 1), convention))
        for _ in range(convs_per_block):
            conv += taps * channels * width
            channels = width
        if glu:
            glu_macs += frames * bins * width * width
        frames, bins = frames // time_pool, bins // freq_pool
    return conv, glu_macs, frames, bins


def _gru(frames: int, inputs: int, hidden: int, layers: int) -> int:
    """Stacked bidirectional GRUs: per layer, step and direction 3 x (inputs x hidden + hidden x hidden)."""
    total = 0
    for _ in range(layers):
        total += frames * 2 * 3 * (inputs * hidden + hidden * hidden)
        inputs = 2 * hidden
    return total


def _head(model, frames: int, features: int) -> int:
    """The frame Dense, and the attention Dense unless the pooling is a plain mean."""
    denses = 1 if model.pooling == "mean" else 2
    return denses * frames * features * model.num_classes
