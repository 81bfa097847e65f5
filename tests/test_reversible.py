"""Reversible ResNets: inversion at ResNet293 depth, custom_vjp gradients equal to plain autodiff, no stored
activations, BN statistics updated once, exact padded inference, training through sv_jax.train, configuration."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from profiling.gpu_check import parity

from profiling import xla_cost, xla_memory
from sv_jax import commands, models, step as step_lib, tasks
from sv_jax.models import cpu_conv
from sv_jax.models import macs as macs_lib
from sv_jax.models import resnet
from sv_jax.models import reversible as rev


def _relative_error(actual, expected) -> float:
    """Largest ||a - e|| / ||e|| over the leaves of two pytrees."""
    pairs = zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True)
    return max(float(jnp.linalg.norm(a - e) / jnp.linalg.norm(e)) for a, e in pairs)


def _normal(shape, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


_fill = parity.filled_variables  # conv and dense weights N(0, 1/fan_in), BN near 1 and 0, no initializer compiled


def _stage_variables(num_blocks: int, convs, seed: int) -> dict:
    """Variables of a ReversibleStage: random kernels, BN parameters and running statistics (see `_fill`)."""
    stage = rev.ReversibleStage(num_blocks, convs, resnet.torch_default_kernel_init)
    x = jax.ShapeDtypeStruct((1, 4, 4, 2 * convs[0][1]), jnp.float32)
    return _fill(jax.eval_shape(lambda v: stage.init(jax.random.key(0), v, None, False), x), seed)


def _stage_params(num_blocks: int, convs, seed: int) -> rev.Params:
    return _stage_variables(num_blocks, convs, seed)["params"]


# Stage functions as the model builds them: (mode, block) -> (input channels, planes, squeeze first).
STAGES = {("partial", "basic"): (8, 8, False), ("partial", "bottleneck"): (16, 4, False),
          ("full", "basic"): (4, 8, True), ("full", "bottleneck"): (4, 8, True)}


def _plain_stage(params: rev.Params, x: jax.Array):
    """The stage function without custom_vjp: (output, batch statistics), differentiated by plain autodiff."""
    y, _, batch_stats = rev.stage_forward(params, x)
    return y, batch_stats


# The stage functions with each convolution lowering (sv_jax.models.cpu_conv): reconstruction must stay exact.
CONVS = {"xla": jax.lax.conv_general_dilated,
         "onednn": pytest.param(cpu_conv.conv_general_dilated, marks=pytest.mark.skipif(
             bool(cpu_conv.unavailable_reason()), reason="oneDNN convolutions unavailable"))}


@pytest.mark.parametrize("conv", list(CONVS.values()), ids=list(CONVS))
def test_inversion_at_resnet293_depth(conv):
    """64 bottleneck couplings (ResNet293's third stage, here 16 channels) reconstruct their input, at unit scale
    (an ordinary block's output, what 'partial' feeds stage 3) and at the scale of the grown stream 'full' feeds
    it. Bit for bit on CPU, thanks to the rounding residue: without it the float32 stream loses ~2e-4 at unit scale
    (the inverse's conditioning: inverting the float32 output in float64 gives the same)."""
    params = _stage_params(64, rev.coupling_convs("full", "bottleneck", 16, 8), seed=0)
    forward = jax.jit(lambda p, v: rev.stage_forward(p, v, conv=conv))
    inverse = jax.jit(lambda p, y, y_lo: rev.invert_stage(p, y, y_lo, conv))
    for scale in (5.0, 1.0):
        x = scale * _normal((4, 10, 12, 16), seed=1)
        y, y_lo, _ = forward(params, x)
        assert _relative_error(y, x) > 1.0, "the stage barely changes its input: inversion would be trivial"
        assert _relative_error(inverse(params, y, y_lo), x) <= 1e-6
    assert _relative_error(inverse(params, y, jnp.zeros_like(y_lo)), x) > 1e-5  # float32 alone, unit scale


@pytest.mark.parametrize("conv", list(CONVS.values()), ids=list(CONVS))
@pytest.mark.parametrize("mode,block", sorted(STAGES))
def test_custom_vjp_gradients_equal_plain_autodiff(mode, block, conv):
    """32 couplings: bit for bit on CPU. A 1e-6 bound catches a stream without its rounding residue (~5e-5 here,
    percents at ResNet293 depth)."""
    channels, planes, squeeze = STAGES[(mode, block)]
    channels_in = 4 * channels if squeeze else channels
    params = _stage_params(32, rev.coupling_convs(mode, block, channels_in, planes), seed=2)
    x = _normal((4, 6, 7, channels), seed=3)  # odd T: 'full' pads it before squeezing
    weights = _normal((4, 3, 4, channels_in) if squeeze else (4, 6, 7, channels), seed=4)
    prepare = rev.squeeze if squeeze else (lambda v: v)

    def loss(stage, p, v):
        y, batch_stats = stage(p, prepare(v))
        return jnp.sum(jnp.sin(y) * weights), batch_stats

    @jax.jit
    def both(p, v):
        grad = lambda stage: jax.grad(lambda p_, v_: loss(stage, p_, v_), argnums=(0, 1), has_aux=True)(p, v)
        plain = lambda p_, v_: rev.stage_forward(p_, v_, conv=conv)[::2]
        return grad(lambda p_, v_: rev.reversible_stage(p_, v_, False, conv)), grad(plain)

    ((custom_params, custom_input), custom_stats), ((plain_params, plain_input), plain_stats) = both(params, x)
    assert _relative_error(custom_params, plain_params) <= 1e-6
    assert _relative_error(custom_input, plain_input) <= 1e-6
    assert _relative_error(custom_stats, plain_stats) <= 1e-6


def _residual_and_temp_bytes(stage, num_blocks: int) -> tuple[int, int]:
    """(bytes the VJP keeps besides the parameters, XLA temp bytes of the compiled gradient) of a stage."""
    params = _stage_params(num_blocks, rev.coupling_convs("full", "bottleneck", 16, 8), seed=5)
    x = _normal((4, 6, 8, 16), seed=6)
    residuals = jax.eval_shape(lambda p, v: jax.vjp(lambda p_, v_: stage(p_, v_)[0], p, v)[1], params, x)
    residual = xla_memory.tree_bytes(residuals) - xla_memory.tree_bytes(params)
    gradient = jax.jit(jax.grad(lambda p, v: jnp.sum(stage(p, v)[0] ** 2), argnums=(0, 1)))
    return residual, gradient.lower(params, x).compile().memory_analysis().temp_size_in_bytes


def test_backward_keeps_only_the_stage_output():
    stage_output_bytes = 4 * 6 * 8 * 16 * 4
    custom = {n: _residual_and_temp_bytes(rev.reversible_stage, n) for n in (2, 8)}
    plain = {n: _residual_and_temp_bytes(_plain_stage, n) for n in (2, 8)}
    assert custom[2][0] == custom[8][0] == 2 * stage_output_bytes  # the output and its rounding residue
    assert custom[8][1] <= 1.1 * custom[2][1]  # XLA's temporaries flat in depth
    # Plain autodiff keeps every block's activations: linear in depth.
    assert plain[8][0] > 3 * plain[2][0] > 3 * 10 * stage_output_bytes
    assert plain[8][1] > 3 * plain[2][1]
    assert plain[8][1] > 5 * custom[8][1]


def test_running_statistics_update_once_per_step():
    """One step (forward and custom_vjp backward) moves the running statistics once, by the forward's batch
    statistics, with momentum 0.9."""
    convs = rev.coupling_convs("full", "bottleneck", 16, 8)
    stage = rev.ReversibleStage(3, convs, resnet.torch_default_kernel_init)
    variables = _stage_variables(3, convs, seed=7)
    x = _normal((4, 6, 8, 16), seed=8)

    @jax.jit
    def step(variables, x):
        def loss(params):
            y, updates = stage.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, None, True,
                                     mutable=["batch_stats"])
            return jnp.sum(y ** 2), updates["batch_stats"]
        _, new_stats = jax.grad(loss, has_aux=True)(variables["params"])
        return new_stats, rev.stage_forward(variables["params"], x)[2]

    new_stats, batch_stats = step(variables, x)
    expected = jax.tree_util.tree_map(lambda old, batch: 0.9 * old + 0.1 * batch, variables["batch_stats"],
                                      batch_stats)
    assert _relative_error(new_stats, expected) <= 1e-6


@pytest.mark.parametrize("mode,block", [("partial", "bottleneck"), ("full", "basic")])
def test_padded_inference_equals_unpadded(mode, block):
    model = resnet.ResNet(block=block, num_blocks=(2, 1, 2, 1), width=4, embed_dim=8, reversible=mode)
    lengths = [37, 64]  # odd at the first two stride-2 stages (37 -> 19 -> 10 -> 5)
    feats = np.random.default_rng(11).normal(size=(2, 64, 16)).astype(np.float32)
    variables = _fill(jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(feats)), seed=12)
    padded = feats.copy()
    for row, length in enumerate(lengths):
        padded[row, length:] = 0.0
    embed = jax.jit(model.apply)
    batched = embed(variables, jnp.asarray(padded), jnp.asarray(lengths))
    single = embed(variables, jnp.asarray(feats[:1, :lengths[0]]))
    np.testing.assert_allclose(batched[0], single[0], rtol=2e-4, atol=2e-5)
    unmasked = embed(variables, jnp.asarray(padded))
    assert not np.allclose(unmasked[0], batched[0], rtol=1e-3, atol=1e-4), "test would not notice leaking padding"


def _model_config(**overrides):
    config = importlib.import_module("configs.default").get_config().model
    with config.unlocked():
        config.update(overrides)
    return config


@pytest.mark.parametrize("mode,dtype", [("partial", "float32"), ("full", "bfloat16")])
def test_trains_through_train_step(mode, dtype):
    config = _model_config(name="ResNet", block="bottleneck", num_blocks=(2, 1, 2, 1), width=4, embed_dim=16,
                           reversible=mode, dtype=dtype)
    model = models.create_model(config, num_classes=4)
    feats, labels = _normal((8, 30, 16), seed=13), jnp.arange(8) % 4
    tx = optax.adam(1e-3)
    abstract = jax.eval_shape(lambda: step_lib.create_train_state(jax.random.key(0), model, tx, feats.shape[1:]))
    variables = _fill(abstract.variables, seed=14)
    state = abstract.replace(step=jnp.zeros((), jnp.int32), params=variables["params"],
                             batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))
    step = jax.jit(lambda s, b: step_lib.train_step(s, b, loss_fn=tasks.speaker_loss(model, lambda _: 0.0), tx=tx,
                                                    learning_rate_fn=lambda _: 1e-3))
    losses = []
    for _ in range(4):
        state, metrics = step(state, {"feats": feats, "label": labels})
        losses.append(float(metrics["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses
    trained = jax.tree_util.tree_leaves((state.params, state.batch_stats))
    assert all(x.dtype == jnp.float32 and np.all(np.isfinite(x)) for x in trained)
    stage = "layer3_1" if mode == "partial" else "layer3_0"  # a reversible stage's running means moved
    old, new = (stats["backbone"][stage]["f"]["conv_bn1"]["mean"] for stats in (variables["batch_stats"],
                                                                                state.batch_stats))
    assert not np.allclose(old, new)


def test_unknown_mode_and_odd_width_are_rejected():
    with pytest.raises(ValueError, match=r"unknown model.reversible 'half'.*'none', 'partial', 'full'"):
        models.create_model(_model_config(reversible="half"), 10)
    model = models.create_model(_model_config(name="ResNet", block="basic", num_blocks=(1, 1, 1, 1), width=5,
                                              reversible="partial"), 10)
    with pytest.raises(ValueError, match="width must be even"):
        jax.eval_shape(lambda: model.backbone.init(jax.random.key(0), jnp.zeros((1, 20, 16))))


# ResNet34 / ResNet293 (feat 80, emb 256) parameters and full-kernel forward MACs at 200 frames (module docstring).
SIZES = {("r34", "partial"): (4_588_384, 2.758), ("r34", "full"): (37_897_888, 17.537),
         ("r293", "partial"): (17_998_432, 14.682), ("r293", "full"): (43_465_440, 39.954)}


@pytest.mark.parametrize("name,mode", sorted(SIZES))
def test_describe_and_analytic_count(name, mode):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.reversible = mode
    description = commands.describe(config)
    assert sum(layer["params"] for layer in description["layers"]) == description["params"] == SIZES[name, mode][0]
    assert description["layers"][-2]["output_shape"] == [1, 10, 25, 256 if name == "r34" else 1024]
    macs = macs_lib.forward_macs(config.model, 200, 80, "full")
    assert round(macs / 1e9, 3) == SIZES[name, mode][1]


@pytest.mark.parametrize("mode,num_blocks", [("partial", (2, 2, 2, 2)), ("full", (1, 1, 1, 1))])
def test_xla_forward_matches_the_analytic_count(mode, num_blocks):
    """XLA counts the convolutions' MACs plus BN, ReLU and adds elementwise (a few percent at width 16). One
    coupling per stage: XLA's cost analysis counts a loop body once, so deeper stages (lax.scan) would undercount."""
    backbone = resnet.ResNet(block="bottleneck", num_blocks=num_blocks, width=16, embed_dim=32, reversible=mode)
    feats = jax.ShapeDtypeStruct((2, 41, 32), jnp.float32)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), feats)
    compiled = jax.jit(backbone.apply).lower(variables, feats).compile()
    analytic = 2 * 2 * macs_lib.backbone_macs(backbone, 41, 32)
    assert analytic < xla_cost.compiled_cost(compiled, 1).flops < 1.1 * analytic
