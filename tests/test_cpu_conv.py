"""oneDNN convolutions on CPU (sv_jax.models.cpu_conv): the forward and both gradients equal XLA's
lax.conv_general_dilated and its autodiff for every kernel, stride and padding the models use, on one device and
batch-sharded over four; a perturbed gradient fails the same check; the models select the lowering by config and
platform and give the same embeddings and gradients either way."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cli import ConfigError
from configs import tiny
from sv_jax import models, programs
from sv_jax.models import cpu_conv, dfresnet, resnet

pytestmark = pytest.mark.skipif(bool(cpu_conv.unavailable_reason()),
                                reason=f"oneDNN convolutions unavailable: {cpu_conv.unavailable_reason()}")

TOLERANCE = 1e-5  # float32: relative to the largest entry; the two libraries sum in different orders

# (batch, height, width, in, out, kernel, stride): every convolution shape class of the ResNets. The stem (1 input
# channel), 3x3 stride 1 and 2 with odd sizes (evaluation utterances), 1x1 projections stride 1 (bottleneck) and 2
# (shortcuts), channel counts off oneDNN's blocking; the DF-ResNets' downsampling, 3x3 with stride 2 along frequency
# only. (Their depthwise convolutions stay XLA's: `supported` refuses feature groups.)
SHAPES = [(4, 10, 13, 1, 8, 3, 1), (4, 10, 13, 8, 8, 3, 1), (4, 11, 13, 8, 16, 3, 2), (4, 10, 12, 8, 16, 1, 1),
          (4, 11, 13, 8, 16, 1, 2), (2, 5, 7, 12, 20, 3, 1), (2, 6, 9, 17, 6, 3, 2), (4, 11, 13, 8, 16, 3, (2, 1))]


def _normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _xla(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=cpu_conv.DIMENSION_NUMBERS)


def parity_errors(conv, x, kernel, strides, padding) -> dict[str, float]:
    """Largest |conv - XLA| / largest |XLA| of the output and of both gradients of sum(sin(conv) * weights)."""
    weights = _normal(_xla(x, kernel, strides, padding).shape, seed=99)

    def outputs(fn):
        loss = lambda x, k: jnp.sum(jnp.sin(fn(x, k, strides, padding)) * weights)
        return (fn(x, kernel, strides, padding), *jax.grad(loss, argnums=(0, 1))(x, kernel))

    ours, reference = jax.jit(lambda: outputs(conv))(), jax.jit(lambda: outputs(_xla))()
    return {name: float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))
            for name, a, b in zip(("output", "input gradient", "kernel gradient"), ours, reference)}


def _case(shape, seed=0):
    batch, height, width, cin, cout, size, stride = shape
    pad = size // 2
    return (_normal((batch, height, width, cin), seed), _normal((size, size, cin, cout), seed + 1),
            stride if isinstance(stride, tuple) else (stride, stride), ((pad, pad), (pad, pad)))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_equal_xla(shape):
    errors = parity_errors(cpu_conv.conv, *_case(shape))
    assert max(errors.values()) <= TOLERANCE, errors


def test_asymmetric_padding_equals_xla():
    x, kernel, strides, _ = _case((2, 9, 10, 4, 6, 3, 2))
    errors = parity_errors(cpu_conv.conv, x, kernel, strides, ((0, 1), (1, 0)))
    assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("part", ["input gradient", "kernel gradient"])
def test_a_perturbed_gradient_fails_the_parity_check(part, monkeypatch):
    """The check above can fail: either gradient off by 1e-4 of its scale (a tenth of a typical float32 bug's
    size, ten times the tolerance) is caught, and only that one."""
    name = {"input gradient": "_backward_data", "kernel gradient": "_backward_weights"}[part]
    original = getattr(cpu_conv, name)

    def perturbed(*args):
        out = original(*args)
        return out + 1e-4 * jnp.max(jnp.abs(out)) * jnp.sign(out)
    monkeypatch.setattr(cpu_conv, name, perturbed)
    errors = parity_errors(cpu_conv.conv, *_case(SHAPES[1]))
    assert errors[part] > 10 * TOLERANCE, errors
    assert max(v for k, v in errors.items() if k != part) <= TOLERANCE, errors


def test_batch_sharded_over_four_devices_equals_one_device():
    """Data parallel: each device convolves its rows (no all-gather of activations) and the kernel gradient is
    summed over the devices."""
    mesh = Mesh(np.asarray(jax.devices()[:4]), ("data",))
    x, kernel, strides, padding = _case((8, 10, 13, 8, 16, 3, 2))
    sharded = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data")))
    loss = lambda x, k: jnp.sum(jnp.sin(cpu_conv.conv(x, k, strides, padding)))
    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    for ours, reference in zip(grad(sharded, kernel), jax.grad(lambda x, k: jnp.sum(jnp.sin(
            _xla(x, k, strides, padding))), argnums=(0, 1))(x, kernel)):
        assert float(jnp.max(jnp.abs(ours - reference)) / jnp.max(jnp.abs(reference))) <= TOLERANCE
    compiled = grad.lower(sharded, kernel).compile().as_text()
    assert compiled.count('custom_call_target="SvJaxConv') == 3
    assert "all-gather" not in compiled


def test_the_flax_adaptor_takes_what_it_supports_and_leaves_the_rest_to_lax():
    x, kernel, strides, padding = _case(SHAPES[1])
    supported = functools.partial(cpu_conv.supported, x, kernel, strides, padding)
    assert supported(dimension_numbers=cpu_conv.DIMENSION_NUMBERS)
    assert supported(dimension_numbers=lax.conv_dimension_numbers(x.shape, kernel.shape, cpu_conv.DIMENSION_NUMBERS))
    assert not supported(dimension_numbers=cpu_conv.DIMENSION_NUMBERS, rhs_dilation=(2, 2))
    assert not supported(dimension_numbers=("NCHW", "OIHW", "NCHW"))
    assert not cpu_conv.supported(x.astype(jnp.bfloat16), kernel, strides, padding,
                                  dimension_numbers=cpu_conv.DIMENSION_NUMBERS)
    dilated = cpu_conv.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=(2, 2),
                                            dimension_numbers=cpu_conv.DIMENSION_NUMBERS)
    assert jnp.array_equal(dilated, lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=(2, 2),
                                                             dimension_numbers=cpu_conv.DIMENSION_NUMBERS))


def test_the_config_selects_the_lowering(monkeypatch):
    monkeypatch.delenv(cpu_conv.ENV_OVERRIDE, raising=False)
    config = tiny.get_config().model
    assert models.conv_lowering(config) == "onednn"  # 'auto' on CPU, float32, library built
    assert models.conv_lowering(config, for_counting=True) == "xla"
    with config.unlocked():
        config.cpu_conv = "xla"
        assert models.conv_lowering(config) == "xla"
        config.cpu_conv = "onednn"
        config.dtype = "bfloat16"
        assert models.conv_lowering(config) == "xla"  # oneDNN here is float32 only
        config.cpu_conv = "fast"
        with pytest.raises(ConfigError, match="model.cpu_conv"):
            models.conv_lowering(config)
        config.cpu_conv, config.dtype = "auto", "float32"
        monkeypatch.setenv(cpu_conv.ENV_OVERRIDE, "xla")  # what tests/conftest.py sets
        assert models.conv_lowering(config) == "xla"


def test_onednn_is_refused_with_one_line_when_it_cannot_load(monkeypatch):
    monkeypatch.delenv(cpu_conv.ENV_OVERRIDE, raising=False)
    monkeypatch.setattr(cpu_conv, "unavailable_reason", lambda: "no C++ compiler 'g++'")
    with pytest.raises(ConfigError, match=r"^model.cpu_conv='onednn': no C\+\+ compiler 'g\+\+'; or set"):
        cpu_conv.resolve("onednn", jnp.float32)
    assert cpu_conv.resolve("auto", jnp.float32) == "xla"


@pytest.mark.parametrize("block,reversible", [("basic", "none"), ("bottleneck", "none"), ("basic", "partial"),
                                              ("bottleneck", "full"), ("inverted", "none"), ("inverted", "partial")])
def test_models_give_the_same_embeddings_and_gradients_with_either_lowering(block, reversible, monkeypatch):
    """A small ResNet of each kind: the same parameters and the same numbers, padded inference included.

    The ReLUs are made smooth (GELU) for this comparison: with ReLUs the gradients are ill-conditioned, a
    pre-activation within float32 rounding of zero flips, and on a 2-core AMD EPYC (AVX-512) the 'full' bottleneck's
    XLA gradients themselves moved by 5% when the input moved by 1e-7, so the two lowerings' rounding differences
    decided the outcome, not the convolutions (which the activation does not touch)."""
    feats, labels = _normal((8, 33, 16), seed=5), jnp.arange(8) % 3
    lengths = jnp.asarray([33, 17, 12, 33, 30, 25, 33, 9])
    def net(lowering):
        if block == "inverted":  # a DF-ResNet
            return dfresnet.DFResNet(num_blocks=(1, 2, 1, 1), width=8, embed_dim=16, reversible=reversible,
                                     conv_lowering=lowering)
        return resnet.ResNet(block=block, num_blocks=(1, 2, 1, 1), width=8, embed_dim=16, reversible=reversible,
                             conv_lowering=lowering)

    monkeypatch.setattr(nn, "relu", jax.nn.gelu)  # the models call nn.relu at trace time
    nets = {lowering: net(lowering) for lowering in ("xla", "onednn")}
    variables = jax.jit(nets["xla"].init)(jax.random.key(0), feats)
    assert jax.tree_util.tree_structure(jax.eval_shape(nets["onednn"].init, jax.random.key(0), feats)) == \
        jax.tree_util.tree_structure(variables)

    def loss(params, net):
        embeddings, _ = net.apply({**variables, "params": params}, feats, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(embeddings) * labels[:, None])

    both = jax.jit(lambda net: (net.apply(variables, feats, lengths), jax.grad(loss)(variables["params"], net)),
                   static_argnums=0)
    outputs = {lowering: both(net) for lowering, net in nets.items()}
    leaves = list(zip(jax.tree_util.tree_leaves(outputs["onednn"]), jax.tree_util.tree_leaves(outputs["xla"])))
    # A DF-ResNet's BN-scale gradients after a 1x1 expansion are sums of O(1) terms that cancel to ~1e-4: their
    # float32 error is relative to the gradients' scale, not to their own (4e-3 of their own, 1e-6 absolute).
    floor = 1e-6 * max(float(jnp.max(jnp.abs(reference))) for _, reference in leaves) if block == "inverted" else 0
    for ours, reference in leaves:
        assert float(jnp.max(jnp.abs(ours - reference))) <= 1e-4 * float(jnp.max(jnp.abs(reference))) + 1e-7 + floor


def test_programs_with_onednn_convolutions_are_counted_with_xla_convolutions():
    """A custom call carries no FLOP count: the train step is counted on a copy with XLA's convolutions, and the
    note says so."""
    config = tiny.get_config()
    config.model.cpu_conv = "onednn"
    compiled = programs.compile_programs(config, batch_size=4, num_classes=10, devices=jax.devices()[:1])
    assert 'custom_call_target="SvJaxConv' in compiled.train_step.as_text()
    cost = compiled.train_step_cost
    assert cost.flops >= 3 * 2 * compiled.forward_macs_per_utt * 4 * 0.9
    assert programs.XLA_CONVS in cost.note
