"""DF-ResNets: WeSpeaker's Gemini DF-ResNet parameter counts, exact padded inference, reversible forms (exact
inversion, custom_vjp gradients equal to plain autodiff), analytic MACs against XLA's count, configuration."""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from profiling import xla_cost
from profiling.gpu_check import parity
from sv_jax import commands, models, programs
from sv_jax.models import depthwise, dfresnet
from sv_jax.models import macs as macs_lib
from sv_jax.models import resnet
from sv_jax.models import reversible as rev

# Counted from WeSpeaker's gemini_dfresnet.py at feat 80, embed 256, TSTP, no head (the figures).
WESPEAKER_PARAMS = {"dfresnet60": 4_047_840, "dfresnet114": 6_531_552, "dfresnet183": 9_196_384,
                    "dfresnet237": 11_680_096}
# 'partial': F and G keep the hidden width 4d, so a coupling has 52 d more parameters than its block (the doubled
# depthwise kernels and BN); sv_jax/models/dfresnet.py states them.
PARTIAL_PARAMS = {"dfresnet60": 4_162_656, "dfresnet114": 6_766_176, "dfresnet183": 9_567_456,
                  "dfresnet237": 12_170_976}

_fill = parity.filled_variables
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(config_file: str, **model):
    config = importlib.import_module(f"configs.{config_file}").get_config()
    config.model.update(model)
    return config


@pytest.mark.parametrize("name", sorted(WESPEAKER_PARAMS))
def test_describe_gives_wespeaker_parameter_counts(name):
    description = commands.describe(_config(name))
    assert description["params"] == WESPEAKER_PARAMS[name] and description["block"] == "inverted"
    assert sum(layer["params"] for layer in description["layers"]) == WESPEAKER_PARAMS[name]
    names = [layer["name"] for layer in description["layers"]]
    assert names[:3] == ["stem", "downsample1", "layer1_0"] and names[-1] == "seg_1"
    # T14c: frequency 80 -> 5, time 200 -> 100 (stride 2 at the second downsampling only).
    assert description["layers"][-2]["output_shape"] == [1, 5, 100, 256]
    assert description["layers"][-1]["params"] == 2 * 5 * 256 * 256 + 256


@pytest.mark.parametrize("name", sorted(PARTIAL_PARAMS))
def test_partial_parameter_counts_are_within_a_few_percent(name):
    params = commands.describe(_config(name, reversible="partial"))["params"]
    assert params == PARTIAL_PARAMS[name]
    assert 1.0 < params / WESPEAKER_PARAMS[name] < 1.05


def test_symmetric_time_strides_and_custom_depth():
    description = commands.describe(_config("dfresnet60", name="DFResNet", num_blocks=(1, 2, 3, 1), width=16,
                                            time_strides=(2, 2, 2, 2)))
    assert description["num_blocks"] == [1, 2, 3, 1] and description["time_strides"] == [2, 2, 2, 2]
    assert description["layers"][-2]["output_shape"] == [1, 5, 13, 128]  # 200 frames -> 100 -> 50 -> 25 -> 13
    assert "not WeSpeaker's" in description["note"]


def test_configuration_errors():
    with pytest.raises(ValueError, match=r"model.name='DFResNet114' fixes num_blocks=\(3, 3, 27, 3\)"):
        models.create_model(_config("dfresnet114", num_blocks=(3, 3, 9, 3)).model, 10)
    with pytest.raises(ValueError, match="model.time_strides applies to DF-ResNets"):
        models.create_model(_config("r34", time_strides=(2, 2, 2, 2)).model, 10)
    with pytest.raises(ValueError, match="model.time_strides needs 4 ints in"):
        models.create_model(_config("dfresnet60", time_strides=(1, 3, 1, 1)).model, 10)
    with pytest.raises(ValueError, match="model.block 'basic' is a ResNet block"):
        models.create_model(_config("dfresnet60", name="DFResNet", block="basic", num_blocks=(1, 1, 1, 1)).model,
                            10)


@pytest.mark.parametrize("mode", ["none", "partial", "full"])
def test_padded_inference_equals_unpadded(mode):
    model = dfresnet.DFResNet(num_blocks=(1, 2, 1, 1), width=4, embed_dim=8, reversible=mode)
    lengths = [37, 64]  # odd at the time-strided downsampling (37 -> 19)
    feats = np.random.default_rng(1).normal(size=(2, 64, 32)).astype(np.float32)
    variables = _fill(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(feats)), seed=2)
    padded = feats.copy()
    for row, length in enumerate(lengths):
        padded[row, length:] = 0.0
    embed = jax.jit(model.apply)
    batched = embed(variables, jnp.asarray(padded), jnp.asarray(lengths))
    single = embed(variables, jnp.asarray(feats[:1, :lengths[0]]))
    np.testing.assert_allclose(batched[0], single[0], rtol=2e-4, atol=2e-5)
    unmasked = embed(variables, jnp.asarray(padded))
    assert not np.allclose(unmasked[0], batched[0], rtol=1e-3, atol=1e-4), "test would not notice leaking padding"


def _relative_error(actual, expected) -> float:
    pairs = zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True)
    return max(float(jnp.linalg.norm(a - e) / jnp.linalg.norm(e)) for a, e in pairs)


def _normal(shape, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _stage_params(num_blocks: int, convs, channels: int, seed: int) -> rev.Params:
    stage = rev.ReversibleStage(num_blocks, convs, resnet.torch_default_kernel_init)
    x = jax.ShapeDtypeStruct((1, 4, 4, channels), jnp.float32)
    return _fill(jax.eval_shape(lambda v: stage.init(jax.random.key(0), v, None, False), x), seed)["params"]


def test_inverted_coupling_convs():
    # 'partial' on a stage of d = 16: halves of 8 channels, hidden 4d = 64, a depthwise 3x3 between the 1x1s.
    assert rev.coupling_convs("partial", "inverted", 16, 16) == ((1, 8, 64), (3, 1, 64), (1, 64, 8))
    # 'full' after T14c's squeezes: stage 2's stream is 8 x width (width 4: 32 channels), planned d = 8.
    assert rev.coupling_convs("full", "inverted", 32, 8) == ((1, 16, 32), (3, 1, 32), (1, 32, 16))


def test_inversion_at_dfresnet237_depth():
    """63 couplings (DF-ResNet237's third stage, here d = 8) reconstruct their input bit for bit."""
    params = _stage_params(63, rev.coupling_convs("partial", "inverted", 8, 8), 8, seed=3)
    y, y_lo, _ = jax.jit(rev.stage_forward)(params, _normal((4, 5, 9, 8), seed=4))
    x = _normal((4, 5, 9, 8), seed=4)
    assert _relative_error(y, x) > 1.0, "the stage barely changes its input: inversion would be trivial"
    assert _relative_error(jax.jit(rev.invert_stage)(params, y, y_lo), x) <= 1e-6


@pytest.mark.parametrize("mode,factors", [("partial", None), ("full", (2, 1)), ("full", (2, 2))])
def test_custom_vjp_gradients_equal_plain_autodiff(mode, factors):
    """24 inverted-bottleneck couplings, after the squeeze 'full' puts in place of a downsampling layer."""
    x = _normal((4, 6, 7, 8), seed=5)  # odd T: a time stride of 2 pads it before squeezing
    prepare = (lambda v: v) if factors is None else (lambda v: rev.squeeze(v, factors))
    channels = prepare(x).shape[-1]
    params = _stage_params(24, rev.coupling_convs(mode, "inverted", channels, 8), channels, seed=6)
    weights = _normal(prepare(x).shape, seed=7)

    def loss(stage, p, v):
        y, batch_stats = stage(p, prepare(v))
        return jnp.sum(jnp.sin(y) * weights), batch_stats

    @jax.jit
    def both(p, v):
        grad = lambda stage: jax.grad(lambda p_, v_: loss(stage, p_, v_), argnums=(0, 1), has_aux=True)(p, v)
        return grad(rev.reversible_stage), grad(lambda p_, v_: rev.stage_forward(p_, v_)[::2])

    ((custom_params, custom_input), custom_stats), ((plain_params, plain_input), plain_stats) = both(params, x)
    assert _relative_error(custom_params, plain_params) <= 1e-6
    assert _relative_error(custom_input, plain_input) <= 1e-6
    assert _relative_error(custom_stats, plain_stats) <= 1e-6


def test_squeeze_is_invertible_space_to_depth():
    x = _normal((2, 5, 7, 3), seed=8)
    y = rev.squeeze(x, (2, 1))
    assert y.shape == (2, 3, 7, 6)
    np.testing.assert_array_equal(y[:, :2, :, 0::2], x[:, 0:4:2, :, :])  # channel c -> 2c (row 0), 2c + 1 (row 1)
    np.testing.assert_array_equal(y[:, :2, :, 1::2], x[:, 1:4:2, :, :])
    np.testing.assert_array_equal(y[:, 2, :, 1::2], 0.0)  # the padded row
    np.testing.assert_array_equal(rev.squeeze(x, (2, 2)), rev.squeeze(x))


# 'partial' also counts each coupling's two error-free TwoSum adds on the stream (reversible.py: ~10 elementwise
# FLOPs per stream element each), 3.2% of its FLOPs at one coupling per stage; 'full''s wide stream hides them.
BOUNDS = {"none": 1.02, "partial": 1.04, "full": 1.02}


@pytest.mark.parametrize("mode", sorted(BOUNDS))
def test_xla_forward_is_within_two_percent_of_twice_the_analytic_macs(mode):
    """On real input (200 x 80, T14c): XLA's forward FLOPs over 2 x the convolutions' and the embedding layer's
    multiply-adds. The rest is BN, ReLU and residual adds. One block per stage: XLA counts a scan body once."""
    backbone = dfresnet.DFResNet(num_blocks=(1, 1, 1, 1), reversible=mode, unroll_scans=True)  # as counted
    feats = jax.ShapeDtypeStruct((1, 200, 80), jnp.float32)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), feats)
    compiled = jax.jit(backbone.apply).lower(variables, feats).compile()
    analytic = 2 * macs_lib.backbone_macs(backbone, 200, 80)
    assert analytic < xla_cost.compiled_cost(compiled, 1).flops < BOUNDS[mode] * analytic


def test_analytic_macs_count_the_depthwise_convolutions():
    """DFResNet60 at 200 x 80: the hand count of every layer (full-kernel convention, WeSpeaker's), with each
    depthwise conv at 9 MACs per output element."""
    dims, depths, positions = (32, 64, 128, 256), (3, 3, 9, 3), (40 * 200, 20 * 100, 10 * 100, 5 * 100)
    stem = 80 * 200 * 9 * 32
    downsample = sum(p * 9 * cin * cout for p, cin, cout in zip(positions, (32, 32, 64, 128), dims))
    blocks = sum(n * p * (8 * d * d + 9 * 4 * d) for n, p, d in zip(depths, positions, dims))
    embedding = 2 * 5 * 256 * 256
    counted = macs_lib.forward_macs(_config("dfresnet60").model, 200, 80, "full")
    assert counted == stem + downsample + blocks + embedding


def test_sweeps_hold_the_four_models_and_constant_depth_stage_moves():
    from profiling.study import sweeps as sweep_config
    depth = sweep_config.load_config_file(ROOT / "configs/sweeps/dfresnet_depth.py")
    assert [sweep_config.variant_config(depth, n, False, 1).model.name for n in sweep_config.variant_names(depth)] \
        == ["DFResNet60", "DFResNet114", "DFResNet183", "DFResNet237"]
    stages = sweep_config.load_config_file(ROOT / "configs/sweeps/dfresnet_stages.py")
    models_ = [sweep_config.variant_config(stages, n, False, 1).model for n in sweep_config.variant_names(stages)]
    assert all(sum(m.num_blocks) == 18 and models.resolve_architecture(m)[0] == "inverted" for m in models_)
    macs = [macs_lib.forward_macs(m, 200, 80, "full") for m in models_]
    assert max(macs) / min(macs) > 1.4  # the point of the sweep: stage 4 blocks cost 3.6x stage 1's


# docs/design.md's table: full-kernel forward GMACs at 200 x 80.
DESIGN_GMACS = {"dfresnet60": 2.793, "dfresnet114": 5.235, "dfresnet183": 8.028, "dfresnet237": 10.471}


@pytest.mark.parametrize("name", sorted(DESIGN_GMACS))
def test_full_kernel_macs_match_the_design_table(name):
    assert round(macs_lib.forward_macs(_config(name).model, 200, 80, "full") / 1e9, 3) == DESIGN_GMACS[name]


# --- Depthwise convolutions (sv_jax/models/depthwise.py) -------------------------------------------------------

def _lax_depthwise(x, k, strides, padding):
    return jax.lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=depthwise.DIMENSION_NUMBERS,
                                        feature_group_count=x.shape[-1])


@pytest.mark.parametrize("strides,padding", [((1, 1), ((1, 1), (1, 1))), ((2, 1), ((1, 1), (1, 1))),
                                             ((2, 2), ((0, 1), (1, 0)))])
def test_shifted_depthwise_equals_lax_with_gradients(strides, padding):
    x, k = _normal((3, 7, 9, 6), seed=9), _normal((3, 3, 1, 6), seed=10)
    w = _normal(_lax_depthwise(x, k, strides, padding).shape, seed=11)
    counted = depthwise.conv_function(jax.lax.conv_general_dilated, counting=True)
    platform = depthwise.conv_function(jax.lax.conv_general_dilated)

    def outputs(fn):
        loss = lambda x_, k_: jnp.sum(jnp.sin(fn(x_, k_, strides, padding)) * w)
        return fn(x, k, strides, padding), *jax.grad(loss, argnums=(0, 1))(x, k)

    def conv(fn):
        return lambda x_, k_, s, p: fn(x_, k_, s, p, dimension_numbers=depthwise.DIMENSION_NUMBERS,
                                       feature_group_count=x_.shape[-1])

    reference = jax.jit(lambda: outputs(_lax_depthwise))()
    for fn in (depthwise.taps, depthwise.counted, conv(counted), conv(platform)):
        for ours, theirs in zip(jax.jit(lambda: outputs(fn))(), reference):
            np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_only_depthwise_convolutions_take_the_shifted_form():
    x, k = jax.ShapeDtypeStruct((2, 5, 5, 4), jnp.float32), jax.ShapeDtypeStruct((3, 3, 1, 4), jnp.float32)
    pads = ((1, 1), (1, 1))
    assert depthwise.is_depthwise(x, k, (1, 1), pads, None, None, depthwise.DIMENSION_NUMBERS, 4)
    assert not depthwise.is_depthwise(x, jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32), (1, 1), pads, None, None,
                                      depthwise.DIMENSION_NUMBERS, 2)  # grouped, not depthwise
    assert not depthwise.is_depthwise(x, k, (1, 1), "SAME", None, None, depthwise.DIMENSION_NUMBERS, 4)
    assert not depthwise.is_depthwise(x, k, (1, 1), pads, None, (2, 2), depthwise.DIMENSION_NUMBERS, 4)


def test_a_dfresnet_train_step_is_counted_at_about_three_forwards():
    """XLA's cost analysis counts a depthwise weight gradient once per channel over: counted as lax's grouped
    convolution the tiny DF-ResNet's step came to 10x its forward. The counted copy has the shifted form."""
    config = _config("dfresnet60", name="DFResNet", num_blocks=(1, 1, 1, 1), width=8)
    config.data.num_frames = 50
    compiled = programs.compile_programs(config, batch_size=4, num_classes=10, devices=jax.devices()[:1])
    step, forward = compiled.train_step_cost, compiled.forward_cost
    assert programs.DEPTHWISE in step.note and programs.DEPTHWISE in forward.note
    ratio = (step.flops / 4) / (forward.flops / 4)
    assert 2.9 < ratio < 3.6, ratio
