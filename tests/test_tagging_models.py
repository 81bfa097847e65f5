"""Tagging models: shapes, the DCASE baseline's parameters and MACs, the analytic MAC count against the traced
program and XLA, exact padded inference, the pooling formulas, config errors."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cli import ConfigError
from profiling import macs as macs_lib
from profiling import xla_cost
from sv_jax import tagging
from sv_jax.models import count_params
from sv_jax.tagging import macs, models

# Small members of each family: quick to compile, wide enough that XLA's count is mostly multiply-adds.
SMALL = {
    "MLP": dict(hidden_sizes=(128, 128)),
    "CNN": dict(channels=(16, 32), pool_sizes=((2, 2), (2, 2))),
    "RNN": dict(rnn_hidden_size=96, rnn_layers=2),
    "CRNN": dict(channels=(16, 32, 64), pool_sizes=((2, 2), (2, 2), (1, 4)), rnn_hidden_size=64),
}
TINY = {
    "MLP": dict(hidden_sizes=(16,)),
    "CNN": dict(channels=(4, 8), pool_sizes=((2, 2), (2, 2))),
    "RNN": dict(rnn_hidden_size=8, rnn_layers=2),
    "CRNN": dict(channels=(4, 8, 8), pool_sizes=((2, 2), (2, 2), (1, 2)), rnn_hidden_size=8),
}
TIME_POOL = {"MLP": 1, "RNN": 1, "CNN": 4, "CRNN": 4}  # of TINY and SMALL

# The DCASE task-4 baseline (DESED_task recipes' net: section) at its MAC-count input: 10 s at 16 kHz, hop 256,
# int(16000 * 10 / 256 + 1) = 626 frames, 128 mels, 10 classes.
DCASE_CHANNELS = (16, 32, 64, 128, 128, 128, 128)
DCASE_POOLS = ((2, 2), (2, 2), (1, 2), (1, 2), (1, 2), (1, 2), (1, 2))
DCASE_FRAMES, DCASE_MELS, DCASE_CLASSES, DCASE_HIDDEN = 626, 128, 10, 128


def _config(name, **fields):
    return ml_collections.ConfigDict(dict(name=name, **fields))


@functools.cache
def _tiny(name, dtype="float32"):
    """(model, random variables) of a TINY model: kernels scaled by fan-in, BN statistics away from (0, 1) so that
    inference uses them (drawn in numpy: no compilation)."""
    model = tagging.create_tagging_model(_config(name, dtype=dtype, **TINY[name]), 5)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((2, 24, 16), jnp.float32))
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        if path[-1].key in ("var", "scale"):
            return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
        scale = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if path[-1].key == "kernel" else 0.3
        return (scale * rng.normal(size=leaf.shape)).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, shapes)


def _features(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- Shapes and the baseline ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(tagging.FAMILIES))
def test_outputs_are_float32_clip_and_frame_logits(name, dtype):
    model, variables = _tiny(name, dtype)
    out = jax.jit(model.apply)(variables, _features((2, 24, 16)))
    assert out.clip.shape == (2, 5) and out.frame.shape == (2, 24 // TIME_POOL[name], 5)
    assert out.clip.dtype == out.frame.dtype == jnp.float32
    assert np.isfinite(out.clip).all() and np.isfinite(out.frame).all()
    if dtype == "bfloat16":  # the computation, not only the head, runs in bfloat16
        reference, _ = _tiny(name)
        assert not np.allclose(out.clip, jax.jit(reference.apply)(variables, _features((2, 24, 16))).clip,
                               rtol=1e-6, atol=1e-6)


def _pytorch_crnn_params():
    """The baseline's parameter count as PyTorch holds it (conv with bias, BN affine, GLU Linear, nn.GRU with
    two biases per gate, two Linear heads)."""
    params, inputs = 0, 1
    for width in DCASE_CHANNELS:
        params += 9 * inputs * width + width + 2 * width + width * width + width
        inputs = width
    hidden, inputs = DCASE_HIDDEN, DCASE_CHANNELS[-1]
    for _ in range(2):
        params += 2 * (3 * (inputs * hidden + hidden * hidden) + 6 * hidden)
        inputs = 2 * hidden
    return params + 2 * (2 * hidden * DCASE_CLASSES + DCASE_CLASSES)


def test_crnn_defaults_are_the_dcase_baseline():
    model = tagging.create_tagging_model(_config("CRNN"), DCASE_CLASSES)
    assert (tuple(model.channels), tuple(model.pool_sizes)) == (DCASE_CHANNELS, DCASE_POOLS)
    assert (model.rnn_hidden_size, model.rnn_layers, model.dropout, model.pooling) == (128, 2, 0.5, "dcase_attention")
    feats = jax.ShapeDtypeStruct((1, DCASE_FRAMES, DCASE_MELS), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), feats)
    assert _pytorch_crnn_params() == 1_112_420
    # Flax's GRUCell has one bias fewer for each of the r and z gates: 2 x 128 per layer and direction.
    assert count_params(variables["params"]) == 1_112_420 - 2 * 2 * 2 * DCASE_HIDDEN
    out = jax.eval_shape(model.apply, variables, feats)
    assert out.frame.shape == (1, 156, DCASE_CLASSES)  # 626 // 2 // 2 frames, the baseline's strong output


def _thop_elementwise_ops(frames=DCASE_FRAMES, bins=DCASE_MELS):
    """What THOP (the DCASE README's counter) counts beyond multiply-adds in the baseline: 4 per BN element
    (2 x numel, doubled when affine), 1 per AvgPool2d output, per GRU step and direction 13 x hidden (biases and
    gate products), and 3 x classes - 1 per frame for the softmax; sigmoids it does not count."""
    ops = 0
    for width, (time_pool, freq_pool) in zip(DCASE_CHANNELS, DCASE_POOLS):
        ops += 4 * frames * bins * width
        frames, bins = frames // time_pool, bins // freq_pool
        ops += frames * bins * width
    return ops + frames * 2 * 2 * 13 * DCASE_HIDDEN + frames * (3 * DCASE_CLASSES - 1)


def test_crnn_macs_match_the_dcase_readme():
    """README of the DCASE 2023/2024 task-4 baseline: 930.902 M MACs per 10 s clip (THOP, full kernels)."""
    config = _config("CRNN")
    full = macs.forward_macs(config, DCASE_CLASSES, DCASE_FRAMES, DCASE_MELS, "full")
    parts = macs.macs_by_part(tagging.create_tagging_model(config, DCASE_CLASSES), DCASE_FRAMES, DCASE_MELS, "full")
    assert parts == {"conv": 701_927_424, "glu": 138_149_888, "gru": 76_677_120, "head": 798_720}
    assert full == sum(parts.values()) == 917_553_152  # 98.6% of the README's figure
    assert full + _thop_elementwise_ops() == 930_901_932
    assert f"{(full + _thop_elementwise_ops()) / 1e6:.3f}" == "930.902"
    # XLA skips the taps on padding: 'real' is what its FLOP count is checked against.
    assert macs.forward_macs(config, DCASE_CLASSES, DCASE_FRAMES, DCASE_MELS, "real") == 858_415_488


# --- MACs: the closed form against the traced program and XLA ----------------------------------------------------

@pytest.mark.parametrize("convention", macs.CONVENTIONS)
@pytest.mark.parametrize("sizes", ["default", "small"])
@pytest.mark.parametrize("name", list(tagging.FAMILIES))
def test_analytic_macs_equal_the_traced_count(name, sizes, convention):
    """profiling.macs reads every convolution and matrix product of the traced forward (scans times their length):
    the closed form must agree to the MAC, also with odd frame and bin counts (floor pooling, edge taps)."""
    frames, bins = (DCASE_FRAMES, DCASE_MELS) if sizes == "default" else (37, 45)
    config = _config(name, **(SMALL[name] if sizes == "small" else {}), pooling="mean" if sizes == "small" else None)
    model = tagging.create_tagging_model(config, DCASE_CLASSES)
    feats = jax.ShapeDtypeStruct((1, frames, bins), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), feats)
    traced = macs_lib.count_macs(lambda v, x: model.apply(v, x), variables, feats, convention=convention)
    assert macs.forward_macs(config, DCASE_CLASSES, frames, bins, convention) == traced


def _xla_flops_per_clip(model, frames, bins, batch=2):
    feats = jnp.zeros((batch, frames, bins))
    variables = jax.eval_shape(model.init, jax.random.key(0), feats)
    compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, feats).compile()
    return xla_cost.compiled_cost(compiled).flops / batch


@pytest.mark.parametrize("name", list(tagging.FAMILIES))
def test_xla_counts_twice_the_analytic_macs(name):
    """XLA's FLOPs are 2 per MAC plus the elementwise work the MAC count leaves out (BN, activations, the GRU gates'
    arithmetic, pooling): at least 2 x MACs and at most 5% over at these widths (1.4-4.0% measured; 0.6-1.8% at the
    default sizes and 626 x 128). GRU scans are counted through the `for_counting` copy, their loops unrolled."""
    frames, bins = 32, 64
    config = _config(name, **SMALL[name])
    floor = 2 * macs.forward_macs(config, 10, frames, bins, "real")
    flops = _xla_flops_per_clip(tagging.create_tagging_model(config, 10, for_counting=True), frames, bins)
    assert floor <= flops < 1.05 * floor
    if name in ("RNN", "CRNN"):  # the loop as trained: XLA counts its body, the recurrent products, once
        model = tagging.create_tagging_model(config, 10)
        steps = frames // TIME_POOL[name]
        recurrent_flops = 2 * steps * model.rnn_layers * 2 * 3 * model.rnn_hidden_size ** 2
        assert _xla_flops_per_clip(model, frames, bins) < flops - 0.5 * recurrent_flops


# --- Padded batches ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(tagging.FAMILIES))
def test_padded_batch_gives_each_clip_its_own_outputs(name):
    model, variables = _tiny(name)
    feats = _features((2, 24, 16), seed=3)
    feats[1, 15:] = 7.0  # padding that would change the min-max scaling, the convolutions and the GRUs
    apply = jax.jit(model.apply)
    padded = apply(variables, feats, jnp.asarray([24, 15]))
    alone = apply(variables, feats[1:, :15])
    valid = 15 // TIME_POOL[name]
    np.testing.assert_allclose(padded.clip[1], alone.clip[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded.frame[1, :valid], alone.frame[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded.clip[0], apply(variables, feats[:1]).clip[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["CNN", "CRNN"])
def test_lengths_in_training_with_batch_norm_raise(name):
    model, variables = _tiny(name)
    with pytest.raises(ValueError, match="inference only"):
        model.apply(variables, _features((2, 24, 16)), jnp.asarray([24, 15]), train=True,
                    mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})


def test_crnn_trains_with_dropout_and_batch_statistics():
    model, variables = _tiny("CRNN")
    feats, labels = _features((2, 24, 16), seed=5), jnp.asarray([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0]])

    def loss(params, key):
        out, updates = model.apply({**variables, "params": params}, feats, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": key})
        return tagging.binary_cross_entropy(out.clip, labels), updates

    (value, updates), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"], jax.random.key(0))
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    assert not np.allclose(updates["batch_stats"]["batchnorm0"]["mean"], variables["batch_stats"]["batchnorm0"]["mean"])
    with pytest.raises(Exception, match="dropout"):  # dropout 0.5 needs its rng in training
        model.apply(variables, feats, train=True, mutable=["batch_stats"])


# --- The pooling ------------------------------------------------------------------------------------------------

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


@pytest.mark.parametrize("pooling", models.POOLINGS)
def test_clip_head_pools_frame_probabilities(pooling):
    """Clip logits are the logit of the weighted mean of frame probabilities: uniform, softmax over time, or the
    baseline's softmax over classes clamped at 1e-7 and normalised over time; padded frames left out."""
    h = _features((2, 6, 4), seed=7) * 3
    head = models.ClipHead(3, pooling)
    params = head.init(jax.random.key(0), h, None)["params"]
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    out = head.apply({"params": params}, h, jnp.asarray(mask))
    dense = lambda layer: h.astype(np.float64) @ params[layer]["kernel"] + params[layer]["bias"]
    frame = dense("frame")
    np.testing.assert_allclose(out.frame, frame, rtol=1e-5, atol=1e-5)
    if pooling == "mean":
        weights = np.ones_like(frame)
    elif pooling == "attention":
        weights = np.exp(dense("attention"))
    else:  # desed_task/nnet/CRNN.py: softmax(dim=-1) on [batch, frames, classes], clamp(1e-7, 1)
        logits = dense("attention")
        weights = np.clip(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True), 1e-7, 1)
    weights = weights * mask[:, :, None]
    probability = (_sigmoid(frame) * weights).sum(1) / weights.sum(1)
    np.testing.assert_allclose(_sigmoid(np.asarray(out.clip, np.float64)), probability, rtol=1e-5)


def test_clip_logits_stay_finite_where_probabilities_saturate():
    frame = jnp.asarray([[[40.0, -40.0]], [[120.0, -120.0]]])  # sigmoid rounds to 1 and 0 in float32
    clip = models.pool_clip_logits(frame, jnp.zeros(()), None)
    np.testing.assert_allclose(clip, frame[:, 0], rtol=1e-4)
    loss = lambda z: tagging.binary_cross_entropy(models.pool_clip_logits(z, jnp.zeros(()), None), jnp.ones((2, 2)))
    assert np.isfinite(jax.grad(loss)(frame)).all()


def test_binary_cross_entropy_trains_every_family_the_same_way():
    logits, labels = jnp.asarray(_features((4, 5), seed=9) * 10), jnp.asarray(np.eye(5)[:4])
    expected = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    np.testing.assert_allclose(tagging.binary_cross_entropy(logits, labels), expected, rtol=1e-6)


# --- Config ------------------------------------------------------------------------------------------------------

def test_config_sets_the_family_fields_and_ignores_the_others():
    model = tagging.create_tagging_model(_config("RNN", rnn_hidden_size=64, rnn_layers=3, channels=[8, 16],
                                                 hidden_sizes=None, pooling="mean"), 7)
    assert isinstance(model, models.RNNTagger) and model.num_classes == 7
    assert (model.rnn_hidden_size, model.rnn_layers, model.pooling) == (64, 3, "mean")
    model = tagging.create_tagging_model(_config("CNN", channels=[8, 16], pool_sizes=[[1, 2], [2, 2]]), 7)
    assert model.channels == (8, 16) and model.pool_sizes == ((1, 2), (2, 2))  # lists as hashable tuples
    assert set(tagging.config_fields("CRNN")) == {"channels", "pool_sizes", "rnn_hidden_size", "rnn_layers",
                                                  "dropout", "pooling", "input_norm"}


@pytest.mark.parametrize("fields, message", [
    (dict(name="Transformer"), r"unknown model.name 'Transformer' for tagging; choose one of "
                               r"\['MLP', 'CNN', 'RNN', 'CRNN'\]"),
    (dict(name="CRNN", dtype="float16"), r"unknown model.dtype 'float16'"),
    (dict(name="MLP", pooling="max"), r"unknown model.pooling 'max'; choose one of \['mean', 'attention'"),
    (dict(name="CNN", input_norm="standard"), r"unknown model.input_norm 'standard'"),
    (dict(name="CRNN", channels=(16, 32)), r"model.pool_sizes needs one \(time, frequency\) pair .* \(2\)"),
    (dict(name="CNN", channels=(8, 16), pool_sizes=((2, 2), (2, 0))), r"positive ints"),
])
def test_config_errors_name_the_key_and_the_choices(fields, message):
    with pytest.raises(ConfigError, match=message):
        tagging.create_tagging_model(ml_collections.ConfigDict(fields), 10)
