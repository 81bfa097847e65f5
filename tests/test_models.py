"""Model parity with WeSpeaker: parameter counts, pooling layout, ArcMargin, margin schedule, exact padded inference."""

import functools
import importlib
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from sv_jax import commands, models
from sv_jax.models import heads, pooling, resnet

# docs/design.md: params at feat 80, emb 256, TSTP, no head.
WESPEAKER_PARAMS = {
    "r18": 4_105_440, "r34": 6_634_336, "r50": 11_131_360, "r101": 15_892_448,
    "r152": 19_814_880, "r221": 23_792_224, "r293": 28_626_016,
}


@pytest.mark.parametrize("name", sorted(WESPEAKER_PARAMS))
def test_describe_gives_wespeaker_parameter_counts(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    description = commands.describe(config)
    assert description["params"] == WESPEAKER_PARAMS[name]
    assert sum(layer["params"] for layer in description["layers"]) == WESPEAKER_PARAMS[name]
    expansion = 1 if description["block"] == "basic" else 4
    # Stage 4 output: 80/8 frequency rows, 200/8 frames, 8 * 32 * expansion channels.
    assert description["layers"][-2]["output_shape"] == [1, 10, 25, 256 * expansion]
    assert description["layers"][-1] == {"name": "seg_1", "output_shape": [1, 256],
                                         "params": 2 * 2560 * expansion * 256 + 256}


def _model_config(**overrides):
    config = importlib.import_module("configs.default").get_config().model
    with config.unlocked():
        config.update(overrides)
    return config


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match=r"unknown model.name 'ResNet35'.*ResNet34"):
        models.create_model(_model_config(name="ResNet35"), 10)


def test_preset_rejects_conflicting_custom_architecture():
    with pytest.raises(ValueError, match="fixes block"):
        models.create_model(_model_config(name="ResNet34", num_blocks=(2, 2, 10, 2)), 10)


def test_custom_architecture_and_bad_dtype():
    model = models.create_model(_model_config(name="ResNet", block="bottleneck", num_blocks=(1, 2, 12, 1)), 10)
    assert model.backbone.num_blocks == (1, 2, 12, 1) and model.backbone.block == "bottleneck"
    with pytest.raises(ValueError, match="needs model.block"):
        models.create_model(_model_config(name="ResNet", num_blocks=(1, 1, 1, 1)), 10)
    with pytest.raises(ValueError, match="unknown model.dtype 'float16'"):
        models.create_model(_model_config(dtype="float16"), 10)


def test_tstp_matches_torch_layout_and_unbiased_std():
    x = np.random.default_rng(0).normal(size=(2, 3, 7, 4)).astype(np.float32)  # (B, F, T, C)
    out = np.asarray(pooling.tstp(jnp.asarray(x)))
    torch_layout = x.transpose(0, 3, 1, 2)  # (B, C, F, T) as PyTorch holds it
    mean = torch_layout.mean(-1).reshape(2, -1)
    std = np.sqrt(torch_layout.var(-1, ddof=1) + 1e-7).reshape(2, -1)
    np.testing.assert_allclose(out, np.concatenate([mean, std], 1), rtol=1e-5, atol=1e-6)


def test_tstp_with_lengths_equals_truncated_input():
    x = np.random.default_rng(1).normal(size=(2, 3, 9, 4)).astype(np.float32)
    out = pooling.tstp(jnp.asarray(x), jnp.asarray([9, 5]))
    np.testing.assert_allclose(out[1], pooling.tstp(jnp.asarray(x[1:, :, :5]))[0], rtol=1e-5, atol=1e-6)


@functools.partial(jax.jit, static_argnums=1)  # eager, one compilation per leaf shape: 13 s
def _randomise(tree, seed):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("block", ["basic", "bottleneck"])
def test_padded_inference_equals_unpadded(block):
    """Masking makes padded evaluation batches exact, whatever the length's parity at each stride."""
    model = resnet.ResNet(block=block, num_blocks=(1, 2, 1, 1), width=4, embed_dim=8)
    lengths = [37, 50, 23]
    feats = np.random.default_rng(2).normal(size=(3, 64, 16)).astype(np.float32)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.asarray(feats[:1, :lengths[0]]))  # eager: 15 s
    # Non-trivial BN statistics and biases, so padded positions would leak if they were not masked.
    variables = {"params": _randomise(variables["params"], 1),
                 "batch_stats": jax.tree_util.tree_map(jnp.abs, _randomise(variables["batch_stats"], 2))}
    padded = feats.copy()
    for row, length in enumerate(lengths):
        padded[row, length:] = 0.0
    apply = jax.jit(model.apply)  # one compilation per shape instead of op-by-op dispatch
    batched = apply(variables, jnp.asarray(padded), jnp.asarray(lengths))
    for row, length in enumerate(lengths):
        single = apply(variables, jnp.asarray(feats[row:row + 1, :length]))
        np.testing.assert_allclose(batched[row], single[0], rtol=2e-4, atol=2e-5)
    unmasked = apply(variables, jnp.asarray(padded))
    assert not np.allclose(unmasked[1], batched[1], rtol=1e-3, atol=1e-4), "test would not notice leaking padding"


def _wespeaker_arcmargin(cosine, label, margin, scale):
    """Reference in numpy, following WeSpeaker's ArcMarginProduct.forward (non-easy margin)."""
    sine = np.sqrt(1.0 - cosine**2)
    phi = cosine * math.cos(margin) - sine * math.sin(margin)
    phi = np.where(cosine > math.cos(math.pi - margin), phi, cosine - (1.0 + math.cos(math.pi - margin)))
    one_hot = np.eye(cosine.shape[1])[label]
    return scale * (one_hot * phi + (1 - one_hot) * cosine)


@pytest.mark.parametrize("margin", [0.0, 0.2, 0.5])
def test_arcmargin_matches_wespeaker(margin):
    rng = np.random.default_rng(3)
    emb = rng.normal(size=(6, 5)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1])
    head = heads.ArcMarginProduct(num_classes=4, scale=32.0)
    variables = head.init(jax.random.key(0), jnp.asarray(emb), jnp.asarray(labels), margin)
    weight = np.array(variables["params"]["weight"])
    weight[:, 0] = -emb[0] + 0.05 * rng.normal(size=5)  # a target angle near pi exercises the fallback branch
    logits = head.apply({"params": {"weight": jnp.asarray(weight)}}, jnp.asarray(emb), jnp.asarray(labels), margin)
    cosine = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ (weight / np.linalg.norm(weight, axis=0))
    np.testing.assert_allclose(logits, _wespeaker_arcmargin(cosine, labels, margin, 32.0), rtol=1e-4, atol=2e-4)


def test_margin_schedule_follows_wespeaker():
    schedule = heads.margin_schedule(0.0, 0.2, increase_start_epoch=20, fix_start_epoch=40, steps_per_epoch=10)
    start, fix = 19 * 10, 39 * 10  # WeSpeaker counts epochs from 1
    assert float(schedule(0)) == 0.0 and float(schedule(start - 1)) == 0.0
    assert float(schedule(fix)) == pytest.approx(0.2) and float(schedule(10_000)) == pytest.approx(0.2)
    t = start + 50
    expected = 0.2 * (1.0 - math.exp((50 / (fix - start)) * math.log(1e-3 / (1.0 + 1e-6))))
    assert float(schedule(t)) == pytest.approx(expected, rel=1e-5)
    assert 0.0 < float(schedule(start + 1)) < float(schedule(t)) < 0.2


def test_bfloat16_keeps_parameters_and_statistics_float32():
    config = _model_config(name="ResNet", block="basic", num_blocks=(1, 1, 1, 1), width=4, embed_dim=8,
                           dtype="bfloat16")
    model = models.create_model(config, 5)
    feats = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 16)), jnp.float32)
    variables = jax.jit(lambda key, x: model.init(key, x, jnp.zeros(2, jnp.int32), 0.2, train=False))(
        jax.random.key(0), feats)
    dtypes = {x.dtype for x in jax.tree_util.tree_leaves(variables)}
    assert dtypes == {jnp.dtype(jnp.float32)}
    (embeddings, logits), _ = jax.jit(lambda v, x: model.apply(v, x, jnp.zeros(2, jnp.int32), 0.2, train=True,
                                                               mutable=["batch_stats"]))(variables, feats)
    assert embeddings.dtype == jnp.float32 and logits.dtype == jnp.float32
    f32 = models.create_model(ml_collections.ConfigDict(dict(config.to_dict(), dtype="float32")), 5)
    reference = f32.apply(variables, feats, method=f32.embed)
    np.testing.assert_allclose(model.apply(variables, feats, method=model.embed), reference, rtol=0.1, atol=0.1)
