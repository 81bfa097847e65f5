"""Audio-tagging models: log-mel frames [B, T, F] to clip (weak) and frame (strong) logits, in four families.

Every family ends in the same `ClipHead`: a Dense layer gives frame logits, and the clip probability of each class
is a weighted mean over time of the frame probabilities, uniform ('mean') or learned ('attention': a second Dense
layer, softmax over time; 'dcase_attention': the DCASE baseline's, below). The clip output is that probability's
logit, so one sigmoid cross-entropy (`binary_cross_entropy`) trains every family.

- `MLPTagger`: per-frame Dense + ReLU layers (`hidden_sizes`).
- `CNNTagger`: VGG-like blocks of two (conv3x3 + BN + ReLU) then average pooling (`channels`, `pool_sizes`),
  frequency averaged out, the head over the remaining frames.
- `RNNTagger`: stacked bidirectional GRUs over the frames (`rnn_hidden_size`, `rnn_layers`).
- `CRNNTagger`: the DCASE task-4 baseline (DESED_task, desed_task/nnet/CNN.py, CRNN.py, RNN.py; its recipes'
  `net:` settings are the defaults): 7 blocks of conv3x3 (with bias) + BN + GLU + dropout + average pooling over
  (time, frequency), channels 16-32-64-128-128-128-128, pools [2,2],[2,2],[1,2]x5; a 2-layer bidirectional GRU of
  128; dropout; Dense to frame logits (the baseline's sigmoid "strong" output) and the baseline's attention pooling.

How the CRNN follows the baseline: input (B, T, F) as an image with time as height, frequency as width; its input
scaling (per-clip min-max over time and frequency, eps 1e-8, the recipes' `scaler:`) is `input_norm='minmax'`, the
default of every family here; BN eps 1e-3 and PyTorch momentum 0.99 (Flax 0.01: the running statistics are
nearly those of the last batch, as there); GLU(x) = Linear(x) * sigmoid(x), the Linear mixing channels at each
time-frequency position; the GRU input is the channel-major flattening of (channels, remaining bins).
Where it differs: the baseline's attention softmax runs over classes, not time (its `nn.Softmax(dim=-1)` on
[batch, frames, classes]), the weights clamped to [1e-7, 1] and then normalised over time; 'dcase_attention' does
exactly that, 'attention' is the softmax over time that attention pooling usually means. Padded frames are left out
of that pooling (the baseline's mask fills them with -1e30 before a softmax over classes, which makes them
uniform, not absent). The GRU is Flax's GRUCell (its input projections computed for all frames before the scan,
see GRU), which has one bias fewer per r and z gate than PyTorch's (which has two that only ever add up): 2 x 128
parameters fewer per layer and direction, 1,111,396 parameters in all against the baseline's 1,112,420.
Initialisation is Flax's, not PyTorch's. The pooling is 'dcase_attention' by default for the CRNN, 'attention' for
the other families. The outputs are logits: the baseline's clip output is the probability sigmoid(clip logits), its
frame output sigmoid(frame logits) transposed to [B, classes, frames].

Padded batches: given `lengths` (valid frames per clip), every output at a valid frame and every clip logit equals
that of the clip alone: padded frames are zeroed before each convolution (what the convolution's own zero padding
sees at the end of the clip), left out of the min-max statistics and of the pooling, and the GRUs run backwards
from each clip's own last frame. The frame axis of CNN and CRNN outputs is pooled: frames T // prod(time pools),
each clip's valid ones `lengths` floor-divided the same way. With BatchNorm, `lengths` is for inference only.

Dropout (`dropout`: the CRNN's 0.5 after every conv block and after the GRU; 0 by default for the others, after
each Dense layer, conv block or the GRUs) needs a 'dropout' rng in training: `model.apply(variables, x, train=True,
rngs={'dropout': key}, mutable=['batch_stats'])` (only CNN and CRNN have batch statistics).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cli import ConfigError
from sv_jax.models import DTYPES

POOLINGS = ("mean", "attention", "dcase_attention")
INPUT_NORMS = ("minmax", "none")
MINMAX_EPS = 1e-8  # the baseline's TorchScaler eps
DCASE_MIN_WEIGHT = 1e-7  # the baseline clamps its attention weights to [1e-7, 1]
_MASKED = -1e30  # log weight of a padded frame: exp() of it is 0, and adding a log-probability keeps it finite


class TaggingOutput(NamedTuple):
    """clip: [B, num_classes] logits of the clip labels. frame: [B, T', num_classes] logits of each output frame
    (T' = T for MLP and RNN, T // prod(time pools) for CNN and CRNN)."""

    clip: jax.Array
    frame: jax.Array


def frame_mask(lengths: jax.Array | None, num_frames: int) -> jax.Array | None:
    """[B, T] True on the valid frames, or None for an unpadded batch."""
    return None if lengths is None else jnp.arange(num_frames)[None, :] < lengths[:, None]


def minmax_normalise(feats: jax.Array, mask: jax.Array | None) -> jax.Array:
    """(x - min) / (max - min + 1e-8) with min and max over each clip's valid frames and bins (the baseline's
    instance min-max scaler); padded frames become 0."""
    if mask is None:
        low, high = feats.min(axis=(1, 2), keepdims=True), feats.max(axis=(1, 2), keepdims=True)
        return (feats - low) / (high - low + MINMAX_EPS)
    valid = mask[:, :, None]
    low = jnp.where(valid, feats, jnp.inf).min(axis=(1, 2), keepdims=True)
    high = jnp.where(valid, feats, -jnp.inf).max(axis=(1, 2), keepdims=True)
    return jnp.where(valid, (feats - low) / (high - low + MINMAX_EPS), 0.0)


def pool_clip_logits(frame_logits: jax.Array, log_weights: jax.Array, mask: jax.Array | None) -> jax.Array:
    """logit(p) for p = sum_t w_t sigmoid(z_t) / sum_t w_t over the valid frames, per clip and class.

    frame_logits z and log_weights log w are [B, T, C] (log w may broadcast); the normalisation of w cancels, so any
    unnormalised log weights do. logit(p) = log p - log(1 - p) is a difference of two log-sum-exps, finite where p
    itself would round to 0 or 1.
    """
    log_weights = jnp.broadcast_to(log_weights, frame_logits.shape)
    if mask is not None:
        log_weights = jnp.where(mask[:, :, None], log_weights, _MASKED)
    positive = jax.nn.logsumexp(log_weights + jax.nn.log_sigmoid(frame_logits), axis=1)
    negative = jax.nn.logsumexp(log_weights + jax.nn.log_sigmoid(-frame_logits), axis=1)
    return positive - negative


class ClipHead(nn.Module):
    """Frame features [B, T, D] -> TaggingOutput, in float32: Dense to frame logits, pooled over time to clip logits
    ('mean', 'attention' or 'dcase_attention', see the module docstring)."""

    num_classes: int
    pooling: str = "attention"

    @nn.compact
    def __call__(self, h: jax.Array, mask: jax.Array | None) -> TaggingOutput:
        h = h.astype(jnp.float32)
        frame = nn.Dense(self.num_classes, name="frame")(h)
        if self.pooling == "mean":
            log_weights = jnp.zeros((), jnp.float32)
        elif self.pooling in ("attention", "dcase_attention"):
            log_weights = nn.Dense(self.num_classes, name="attention")(h)
            if self.pooling == "dcase_attention":  # softmax over classes, clamped
                log_weights = jnp.maximum(jax.nn.log_softmax(log_weights, axis=-1), jnp.log(DCASE_MIN_WEIGHT))
        else:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose one of {list(POOLINGS)}")
        return TaggingOutput(clip=pool_clip_logits(frame, log_weights, mask), frame=frame)


def _check_call(module: nn.Module, train: bool, lengths: jax.Array | None, batch_norm: bool) -> None:
    if module.input_norm not in INPUT_NORMS:
        raise ValueError(f"unknown input_norm {module.input_norm!r}; choose one of {list(INPUT_NORMS)}")
    if batch_norm and train and lengths is not None:
        raise ValueError("lengths (padded batches) are for inference only: padding would bias BN statistics")


def _input(module: nn.Module, feats: jax.Array, mask: jax.Array | None) -> jax.Array:
    """The features as the model's first layer sees them: scaled (input_norm), padded frames zero, in float32."""
    feats = feats.astype(jnp.float32)
    if module.input_norm == "minmax":
        return minmax_normalise(feats, mask)
    return feats if mask is None else jnp.where(mask[:, :, None], feats, 0.0)


def _zero_padding(x: jax.Array, lengths: jax.Array | None) -> jax.Array:
    """NHWC activations (B, T, F, C) with the frames past each clip's length set to 0."""
    if lengths is None:
        return x
    return x * frame_mask(lengths, x.shape[1]).astype(x.dtype)[:, :, None, None]


def _pool(x: jax.Array, lengths: jax.Array | None, pool: tuple[int, int]):
    """Average pooling over (time, frequency) with window = stride = `pool` (PyTorch's AvgPool2d: floor)."""
    x = nn.avg_pool(x, pool, strides=pool)
    if lengths is not None:
        lengths = lengths // pool[0]
    return _zero_padding(x, lengths), lengths


def _channel_major_frames(x: jax.Array) -> jax.Array:
    """(B, T, F, C) -> (B, T, C * F), index c * F + f, as PyTorch flattens (B, T, C, F)."""
    return jnp.swapaxes(x, 2, 3).reshape(x.shape[0], x.shape[1], -1)


class GRUStep(nn.RNNCellBase):
    """The recurrent half of a GRU step, Flax's GRUCell equations with the input projections computed beforehand:
    r = sigmoid(x_r + b_r + W_hr h), z = sigmoid(x_z + b_z + W_hz h), n = tanh(x_n + b_n + r * (W_hn h + b_hn)),
    h' = (1 - z) n + z h, for `inputs` = [x_r, x_z, x_n] = x W_i (no bias: see GRU)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, inputs: jax.Array) -> tuple[jax.Array, jax.Array]:
        inputs = inputs + self.param("input_bias", nn.initializers.zeros, (3 * self.features,))
        x_r, x_z, x_n = jnp.split(inputs, 3, axis=-1)
        recurrent = functools.partial(nn.Dense, self.features, dtype=self.dtype,
                                      kernel_init=nn.initializers.orthogonal())  # GRUCell's recurrent init
        r = nn.sigmoid(x_r + recurrent(use_bias=False, name="hr")(h))
        z = nn.sigmoid(x_z + recurrent(use_bias=False, name="hz")(h))
        n = jnp.tanh(x_n + r * recurrent(name="hn")(h))
        h = (1.0 - z) * n + z * h
        return h, h

    @nn.nowrap
    def initialize_carry(self, rng: jax.Array, input_shape: tuple[int, ...]) -> jax.Array:
        return jnp.zeros((*input_shape[:-1], self.features), jnp.float32)

    @property
    def num_feature_axes(self) -> int:
        return 1


class GRU(nn.Module):
    """One direction of a GRU layer over [B, T, D] -> [B, T, hidden_size], Flax's GRUCell with its input projection
    hoisted out of the scan: one [B*T, D] x [D, 3 hidden] product instead of T small ones, and the scan reads that
    product itself. Its biases are added inside the step: XLA fuses elementwise producers of a scan's input into each
    unrolled step and counts them there over the whole sequence (an unrolled RNN at 626 frames counted 33% over its
    MACs with the min-max scaling, or a bias, in front of the scan; 1.0% with the bare product).
    `unroll`: unroll the scan over time, for counting FLOPs only (XLA counts a loop body once)."""

    hidden_size: int
    reverse: bool = False
    dtype: Any = jnp.float32
    unroll: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
        inputs = nn.Dense(3 * self.hidden_size, use_bias=False, dtype=self.dtype, name="input")(x)
        rnn = nn.RNN(GRUStep(self.hidden_size, self.dtype, parent=None), unroll=self.unroll or 1, name="recurrent")
        return rnn(inputs, seq_lengths=lengths, reverse=self.reverse, keep_order=True)


class BiGRU(nn.Module):
    """Stacked bidirectional GRUs over [B, T, D] -> [B, T, 2 * hidden_size] (forward and backward concatenated); the
    backward direction runs from each clip's own last frame given `lengths`."""

    hidden_size: int
    num_layers: int
    dtype: Any = jnp.float32
    unroll: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, lengths: jax.Array | None) -> jax.Array:
        for layer in range(self.num_layers):
            x = jnp.concatenate([
                GRU(self.hidden_size, reverse, self.dtype, self.unroll, name=f"layer{layer}_{direction}")(x, lengths)
                for direction, reverse in (("forward", False), ("backward", True))], axis=-1)
        return x


class MLPTagger(nn.Module):
    """Per-frame Dense + ReLU layers of `hidden_sizes`, then the clip head."""

    num_classes: int
    hidden_sizes: Sequence[int] = (256, 256)
    dropout: float = 0.0
    pooling: str = "attention"
    input_norm: str = "minmax"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> TaggingOutput:
        _check_call(self, train, lengths, batch_norm=False)
        mask = frame_mask(lengths, feats.shape[1])
        x = _input(self, feats, mask).astype(self.dtype)
        for index, size in enumerate(self.hidden_sizes):
            x = nn.relu(nn.Dense(size, dtype=self.dtype, name=f"dense{index}")(x))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return ClipHead(self.num_classes, self.pooling, name="head")(x, mask)


class CNNTagger(nn.Module):
    """VGG-like: per block two (conv3x3, no bias + BN + ReLU) and average pooling over (time, frequency); the bins
    left are averaged, the clip head runs over the pooled frames. BN eps 1e-5, Flax momentum 0.9 (PyTorch's 0.1)."""

    num_classes: int
    channels: Sequence[int] = (32, 64, 128, 256)
    pool_sizes: Sequence[Sequence[int]] = ((2, 2), (2, 2), (2, 2), (2, 2))
    dropout: float = 0.0
    pooling: str = "attention"
    input_norm: str = "minmax"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> TaggingOutput:
        _check_call(self, train, lengths, batch_norm=True)
        x = _input(self, feats, frame_mask(lengths, feats.shape[1]))[..., None].astype(self.dtype)
        for block, (width, pool) in enumerate(zip(self.channels, self.pool_sizes)):
            for conv in range(2):
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=self.dtype,
                            name=f"conv{block}_{conv}")(x)
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                                 name=f"batchnorm{block}_{conv}")(x)
                x = _zero_padding(nn.relu(x), lengths)
            x, lengths = _pool(x, lengths, tuple(pool))
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return ClipHead(self.num_classes, self.pooling, name="head")(x.mean(axis=2), frame_mask(lengths, x.shape[1]))


class RNNTagger(nn.Module):
    """Stacked bidirectional GRUs over the frames, then the clip head. `unroll_scans`: for counting FLOPs only."""

    num_classes: int
    rnn_hidden_size: int = 128
    rnn_layers: int = 2
    dropout: float = 0.0
    pooling: str = "attention"
    input_norm: str = "minmax"
    dtype: Any = jnp.float32
    unroll_scans: bool = False

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> TaggingOutput:
        _check_call(self, train, lengths, batch_norm=False)
        mask = frame_mask(lengths, feats.shape[1])
        x = _input(self, feats, mask).astype(self.dtype)
        x = BiGRU(self.rnn_hidden_size, self.rnn_layers, self.dtype, self.unroll_scans, name="rnn")(x, lengths)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return ClipHead(self.num_classes, self.pooling, name="head")(x, mask)


class CRNNTagger(nn.Module):
    """The DCASE task-4 baseline CRNN (module docstring). `unroll_scans`: for counting FLOPs only."""

    num_classes: int
    channels: Sequence[int] = (16, 32, 64, 128, 128, 128, 128)
    pool_sizes: Sequence[Sequence[int]] = ((2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2))
    rnn_hidden_size: int = 128
    rnn_layers: int = 2
    dropout: float = 0.5
    pooling: str = "dcase_attention"
    input_norm: str = "minmax"
    dtype: Any = jnp.float32
    unroll_scans: bool = False

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> TaggingOutput:
        _check_call(self, train, lengths, batch_norm=True)
        x = _input(self, feats, frame_mask(lengths, feats.shape[1]))[..., None].astype(self.dtype)
        for block, (width, pool) in enumerate(zip(self.channels, self.pool_sizes)):
            x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype, name=f"conv{block}")(x)
            x = nn.BatchNorm(use_running_average=not train, momentum=0.01, epsilon=1e-3, dtype=self.dtype,
                             name=f"batchnorm{block}")(x)
            x = nn.Dense(width, dtype=self.dtype, name=f"glu{block}")(x) * nn.sigmoid(x)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
            x, lengths = _pool(x, lengths, tuple(pool))
        x = BiGRU(self.rnn_hidden_size, self.rnn_layers, self.dtype, self.unroll_scans, name="rnn")(
            _channel_major_frames(x), lengths)
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return ClipHead(self.num_classes, self.pooling, name="head")(x, frame_mask(lengths, x.shape[1]))


FAMILIES = {"MLP": MLPTagger, "CNN": CNNTagger, "RNN": RNNTagger, "CRNN": CRNNTagger}
_NOT_FROM_CONFIG = ("num_classes", "dtype", "unroll_scans", "parent", "name")


def config_fields(family: str) -> tuple[str, ...]:
    """The `model.*` fields a family reads (besides name and dtype); unset ones keep the family's defaults."""
    return tuple(f.name for f in dataclasses.fields(FAMILIES[family]) if f.name not in _NOT_FROM_CONFIG)


def _has_field(family: str, field: str) -> bool:
    return any(f.name == field for f in dataclasses.fields(FAMILIES[family]))


def create_tagging_model(model_config, num_classes: int, *, for_counting: bool = False) -> nn.Module:
    """The tagging model `model_config` describes: model.name in FAMILIES, model.dtype, and the family's
    `config_fields` (other fields are ignored: one config section may carry every family's). `for_counting`: the
    GRUs' scans unrolled, for counting FLOPs only."""
    name = model_config.name
    if name not in FAMILIES:
        raise ConfigError(f"unknown model.name {name!r} for tagging; choose one of {list(FAMILIES)}")
    dtype = model_config.get("dtype") or "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown model.dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    fields = {key: _tuples(model_config[key]) for key in config_fields(name) if model_config.get(key) is not None}
    for key, choices in (("pooling", POOLINGS), ("input_norm", INPUT_NORMS)):
        if key in fields and fields[key] not in choices:
            raise ConfigError(f"unknown model.{key} {fields[key]!r}; choose one of {list(choices)}")
    if _has_field(name, "pool_sizes"):
        channels = fields.get("channels", FAMILIES[name].channels)
        pools = fields.get("pool_sizes", FAMILIES[name].pool_sizes)
        if len(pools) != len(channels) or any(len(p) != 2 or min(p) < 1 for p in pools):
            raise ConfigError(f"model.pool_sizes needs one (time, frequency) pair of positive ints per entry of "
                              f"model.channels ({len(channels)}), got {pools!r}")
    if for_counting and _has_field(name, "unroll_scans"):
        fields["unroll_scans"] = True
    return FAMILIES[name](num_classes=num_classes, dtype=DTYPES[dtype], **fields)


def describe(model: nn.Module) -> str:
    """A built tagging model's shape in a few words, for tables: 'Dense 512-512', 'CNN 16-32-64-128 (2 convs per
    block)', 'BiGRU 2 x 128', 'conv+GLU 16-32-64-128-128-128-128, BiGRU 2 x 128'."""
    dashed = lambda sizes: "-".join(map(str, sizes))
    if isinstance(model, MLPTagger):
        return f"Dense {dashed(model.hidden_sizes)}"
    if isinstance(model, CNNTagger):
        return f"conv {dashed(model.channels)} (2 per block)"
    if isinstance(model, RNNTagger):
        return f"BiGRU {model.rnn_layers} x {model.rnn_hidden_size}"
    return f"conv+GLU {dashed(model.channels)}, BiGRU {model.rnn_layers} x {model.rnn_hidden_size}"


def _tuples(value):
    """Config lists (and lists of lists) as tuples: module attributes must be hashable."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Multi-label sigmoid cross-entropy, the mean over classes and batch: mean(softplus(z) - y z), written as
    max(z, 0) - y z + log1p(exp(-|z|)) so that it neither overflows nor loses precision for large |z|."""
    logits = logits.astype(jnp.float32)
    labels = labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(logits, 0.0) - logits * labels + jnp.log1p(jnp.exp(-jnp.abs(logits))))
