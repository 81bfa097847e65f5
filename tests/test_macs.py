"""profiling.macs: MACs counted from a traced program, on hand-made programs, and on the real models against the
hand-written per-layer count it replaced (kept here as its numbers) and WeSpeaker's table."""

import functools
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from profiling import macs
from sv_jax import models

NHWC = ("NHWC", "HWIO", "NHWC")


def _conv(x, w, strides=(1, 1), padding=((1, 1), (1, 1)), numbers=NHWC, **kwargs):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=numbers, **kwargs)


def _spec(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _both(fn, *args, **kwargs):
    return {c: macs.count_macs(fn, *args, convention=c, **kwargs) for c in macs.CONVENTIONS}


# --- Hand-made programs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("in_size, kernel, stride, padding, real, full", [
    (3, 3, 1, (1, 1), 7, 9),  # the two edge outputs each lose one tap to padding
    (5, 3, 2, (1, 1), 7, 9),  # outputs 0, 1, 2 see 2, 3, 2 real taps
    (7, 1, 2, (0, 0), 4, 4),  # no padding, nothing lost
    (4, 3, 2, (1, 1), 5, 6),  # even size: only the first output touches padding
])
def test_conv_taps_per_axis(in_size, kernel, stride, padding, real, full):
    assert macs.conv_taps(in_size, kernel, stride, padding, "real") == real
    assert macs.conv_taps(in_size, kernel, stride, padding, "full") == full


def test_conv_3x3_same_padding():
    b, cin, cout = 2, 3, 5
    counts = _both(_conv, _spec(b, 3, 3, cin), _spec(3, 3, cin, cout))
    assert counts == {"real": b * cin * cout * 7 * 7, "full": b * cin * cout * 9 * 9}
    assert counts["real"] / counts["full"] == 49 / 81


def test_conv_stride_2():
    counts = _both(lambda x, w: _conv(x, w, (2, 2)), _spec(1, 5, 5, 4), _spec(3, 3, 4, 8))
    assert counts == {"real": 4 * 8 * 7 * 7, "full": 4 * 8 * 9 * 9}


def test_conv_kernel_1_stride_2():
    counts = _both(lambda x, w: _conv(x, w, (2, 2), ((0, 0), (0, 0))), _spec(3, 7, 7, 4), _spec(1, 1, 4, 8))
    assert counts == {"real": 3 * 4 * 8 * 4 * 4, "full": 3 * 4 * 8 * 4 * 4}


@pytest.mark.parametrize("numbers", [NHWC, ("NCHW", "OIHW", "NCHW"), ("NHWC", "OIHW", "NCHW")])
def test_conv_axes_come_from_dimension_numbers(numbers):
    # Height: kernel 3, padding 1, stride 1 over 3 (7 real / 9 full taps); width: kernel 1, stride 2 over 7 (4).
    b, cin, cout = 2, 3, 5
    lhs = {"NHWC": (b, 3, 7, cin), "NCHW": (b, cin, 3, 7)}[numbers[0]]
    rhs = {"HWIO": (3, 1, cin, cout), "OIHW": (cout, cin, 3, 1)}[numbers[1]]
    counts = _both(lambda x, w: _conv(x, w, (1, 2), ((1, 1), (0, 0)), numbers), _spec(*lhs), _spec(*rhs))
    assert counts == {"real": b * cin * cout * 7 * 4, "full": b * cin * cout * 9 * 4}


@pytest.mark.parametrize("geometry", [
    dict(strides=(2, 1), padding=((1, 1), (2, 0))),
    dict(strides=(1, 3), padding=((0, 2), (1, 1)), rhs_dilation=(2, 1)),
    dict(strides=(1, 1), padding=((2, 2), (1, 1)), lhs_dilation=(2, 3)),  # a strided conv's input gradient
    dict(strides=(2, 2), padding=((-1, 1), (1, 1))),  # negative padding crops
    dict(strides=(1, 2), padding=((1, 1), (1, 1)), feature_group_count=2),
    dict(strides=(1, 1), padding=((1, 1), (0, 0)), batch_group_count=2),  # a grouped conv's kernel gradient
])
def test_conv_matches_brute_force(geometry):
    """'real' = the sum of conv(ones, ones) (each output element adds up its real taps x input features);
    'full' = output elements x kernel taps x kernel input features."""
    x, w = jnp.ones((4, 9, 8, 6)), jnp.ones((3, 2, 6 // geometry.get("feature_group_count", 1), 4))
    conv = functools.partial(lax.conv_general_dilated, dimension_numbers=NHWC, window_strides=geometry["strides"],
                             **{k: v for k, v in geometry.items() if k != "strides"})
    out = conv(x, w)
    assert macs.count_macs(conv, x, w, convention="real") == int(jnp.sum(out))
    assert macs.count_macs(conv, x, w, convention="full") == out.size * 3 * 2 * w.shape[2]


def test_conv_gradient_costs_twice_the_forward():
    # Both gradients of a strided, padded conv touch exactly the forward's real (input, tap, output) triples: the
    # input gradient through lhs dilation (its holes are not counted), the kernel gradient through rhs dilation.
    x, w = _spec(2, 9, 8, 3), _spec(3, 3, 3, 4)
    forward = lambda x, w: _conv(x, w, (2, 2)).sum()
    real = macs.count_macs(forward, x, w)
    assert macs.count_macs(jax.value_and_grad(forward, argnums=(0, 1)), x, w) == 3 * real


def test_dot_general():
    assert macs.count_macs(jnp.matmul, _spec(6, 7), _spec(7, 5)) == 6 * 7 * 5
    # batch 3, contracting 4 x 2, lhs free 5, rhs free 6
    einsum = lambda a, b: jnp.einsum("bkxl,bklz->bxz", a, b)
    assert macs.count_macs(einsum, _spec(3, 4, 5, 2), _spec(3, 4, 2, 6)) == 3 * 4 * 2 * 5 * 6
    # conventions concern convolutions only
    assert macs.count_macs(jnp.matmul, _spec(6, 7), _spec(7, 5), convention="full") == 6 * 7 * 5


def test_scan_counts_its_body_length_times():
    def fn(a, w):
        return lax.scan(lambda c, _: (c @ w, None), a, None, length=5)[0]
    assert macs.count_macs(fn, _spec(2, 4), _spec(4, 4)) == 5 * 2 * 4 * 4
    # a fori_loop with static bounds is a scan
    assert macs.count_macs(lambda a, w: lax.fori_loop(0, 3, lambda i, c: c @ w, a), _spec(2, 4),
                           _spec(4, 4)) == 3 * 2 * 4 * 4


def test_nested_jit_remat_and_closed_call():
    inner = jax.jit(lambda a, b: a @ b)
    assert macs.count_macs(lambda a, b: inner(a, b) + inner(a, b), _spec(2, 3), _spec(3, 4)) == 2 * 2 * 3 * 4
    nested = jax.jit(lambda a, b: jax.checkpoint(inner)(a, b) @ b.T)
    assert macs.count_macs(nested, _spec(2, 3), _spec(3, 4)) == 2 * 3 * 4 + 2 * 4 * 3


def test_custom_vjp_counts_the_primal_once():
    @jax.custom_vjp
    def f(a, b):
        return a @ b

    def f_fwd(a, b):
        return a @ b, (a, b, a.T @ a)  # the fwd rule does more than the primal: + 3x4x3

    def f_bwd(res, g):
        a, b, s = res
        return g @ b.T, (s @ a.T) @ g  # 4x5x3, then 3x3x4 and 3x4x5 (a wrong gradient, but one to count)

    f.defvjp(f_fwd, f_bwd)
    a, b = _spec(4, 3), _spec(3, 5)
    assert macs.count_macs(f, a, b) == 4 * 3 * 5
    # Differentiated, the program is made of the rules: fwd and bwd, each counted once.
    grad = jax.grad(lambda a, b: f(a, b).sum(), argnums=(0, 1))
    assert macs.count_macs(grad, a, b) == 4 * 3 * 5 + 3 * 4 * 3 + 4 * 5 * 3 + 3 * 3 * 4 + 3 * 4 * 5


def test_custom_jvp_counts_the_primal_once():
    @jax.custom_jvp
    def f(a, b):
        return a @ b

    f.defjvp(lambda p, t: (f(*p), t[0] @ p[1] + p[0] @ t[1]))
    assert macs.count_macs(f, _spec(4, 3), _spec(3, 5)) == 4 * 3 * 5
    # jvp: the rule's primal call and its two tangent products
    jvp = lambda a, b: jax.jvp(f, (a, b), (a, b))
    assert macs.count_macs(jvp, _spec(4, 3), _spec(3, 5)) == 3 * 4 * 3 * 5


def test_cond_takes_the_most_expensive_branch():
    fn = lambda p, a, b: lax.cond(p, lambda a, b: (a @ b) @ b.T, lambda a, b: a, a, b)
    assert macs.count_macs(fn, jax.ShapeDtypeStruct((), jnp.bool_), _spec(3, 3), _spec(3, 3)) == 2 * 27


def test_while_loop_raises():
    fn = lambda a: lax.while_loop(lambda c: c.sum() < 10.0, lambda c: c @ c, a)
    with pytest.raises(ValueError, match="while"):
        macs.count_macs(fn, _spec(3, 3))
    fori = lambda n, a: lax.fori_loop(0, n, lambda i, c: c @ c, a)  # traced bounds: a while
    with pytest.raises(ValueError, match="while"):
        macs.count_macs(fori, jax.ShapeDtypeStruct((), jnp.int32), _spec(3, 3))


def test_unknown_convention_raises():
    with pytest.raises(ValueError, match=r"'real', 'full'"):
        macs.count_macs(jnp.matmul, _spec(2, 2), _spec(2, 2), convention="wespeaker")
    with pytest.raises(ValueError, match=r"'real', 'full'"):
        macs.conv_taps(3, 3, 1, (1, 1), "half")


def test_unknown_higher_order_primitive_is_walked_once():
    prim = jax.extend.core.Primitive("test_hop")
    prim.multiple_results = True
    prim.def_abstract_eval(lambda *avals, body, more: body.out_avals)
    body = jax.make_jaxpr(lambda a: [a @ a])(_spec(3, 3))
    other = jax.make_jaxpr(lambda a: [a @ a @ a])(_spec(3, 3))
    fn = lambda a: prim.bind(a, body=body, more=(other.jaxpr, 7))[0]
    assert macs.count_macs(fn, _spec(3, 3)) == 27 + 2 * 27


def test_shard_map_counts_every_device():
    devices = jax.devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("d",))
    spec = jax.sharding.PartitionSpec
    fn = jax.shard_map(lambda a, b: a @ b, mesh=mesh, in_specs=(spec("d"), spec()), out_specs=spec("d"))
    a = jax.device_put(jnp.ones((2 * len(devices), 3)), jax.sharding.NamedSharding(mesh, spec("d")))
    b = jax.device_put(jnp.ones((3, 4)), jax.sharding.NamedSharding(mesh, spec()))
    assert macs.count_macs(fn, a, b) == 2 * len(devices) * 3 * 4  # the global matmul's


def test_static_arguments_and_concrete_arrays():
    fn = lambda x, w, *, twice: _conv(x, w) * 2 if twice else _conv(_conv(x, w), w)
    x, w = np.ones((1, 3, 3, 2), np.float32), jnp.ones((3, 3, 2, 2))
    assert macs.count_macs(fn, x, w, twice=True) == 2 * 2 * 49
    assert macs.count_macs(fn, x, w, twice=False) == 2 * 2 * 2 * 49


# --- The real models: parity with the hand-written count ---------------------------------------------------------

# WeSpeaker's full-kernel forward GMACs at 200 frames x 80 bins (conv + embedding layer), docs/design.md's table.
WESPEAKER_GMACS = {"r18": 2.169, "r34": 4.528, "r50": 5.073, "r101": 9.807, "r152": 14.542, "r221": 20.949,
                   "r293": 27.633}


# (model, reversible, frames, bins) -> (real, full): the counts of the hand-written per-layer description of the
# ResNets (profiling/flops.py's _conv_layers, removed once this count replaced it; both agreed exactly).
HAND_WRITTEN = {
    ("r18", "none", 200, 80): (2084488832, 2168606720), ("r34", "none", 200, 80): (4345128576, 4527902720),
    ("r50", "none", 200, 80): (4983996032, 5072506880), ("r101", "none", 200, 80): (9603104384, 9807482880),
    ("r152", "none", 200, 80): (14235778688, 14542458880), ("r221", "none", 200, 80): (20527591040, 20948602880),
    ("r293", "none", 200, 80): (27082649216, 27633274880),
    ("r34", "partial", 200, 80): (2650441344, 2758430720), ("r34", "partial", 37, 32): (187934912, 214840320),
    ("r34", "partial", 21, 19): (64758624, 81563872),
    ("r34", "full", 200, 80): (16496483968, 17536798720), ("r34", "full", 37, 32): (1133482176, 1388590080),
    ("r34", "full", 21, 19): (400436064, 559311072),
    ("r50", "partial", 200, 80): (3350220416, 3401338880), ("r50", "partial", 37, 32): (252735680, 265958400),
    ("r50", "partial", 21, 19): (92600160, 101369056),
    ("r50", "full", 200, 80): (6985506432, 7186042880), ("r50", "full", 37, 32): (515477696, 564868096),
    ("r50", "full", 21, 19): (191337312, 221565152),
}


@functools.cache
def _backbone(name: str, reversible: str = "none"):
    config = importlib.import_module(f"configs.{name}").get_config()
    config.model.reversible = reversible
    return models.create_model(config.model, num_classes=1).backbone


@functools.cache
def _variables(name: str, reversible: str, frames: int, bins: int):
    backbone = _backbone(name, reversible)
    return jax.eval_shape(lambda: backbone.init(jax.random.key(0), jnp.zeros((1, frames, bins))))


def _model_macs(name, reversible, frames, bins, convention, train=False):
    backbone = _backbone(name, reversible)
    if train:  # batch statistics; reversible stages run their custom_vjp
        fn = lambda v, x: backbone.apply(v, x, train=True, mutable=["batch_stats"])
    else:
        fn = lambda v, x: backbone.apply(v, x)
    return macs.count_macs(fn, _variables(name, reversible, frames, bins), _spec(1, frames, bins),
                           convention=convention)


@pytest.mark.parametrize("convention", macs.CONVENTIONS)
@pytest.mark.parametrize("name", sorted(WESPEAKER_GMACS, key=lambda n: int(n[1:])))
def test_resnet_matches_hand_written_count(name, convention):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert (config.data.num_frames, config.data.num_mel_bins) == (200, 80)
    counted = _model_macs(name, "none", 200, 80, convention)
    assert counted == HAND_WRITTEN[name, "none", 200, 80][macs.CONVENTIONS.index(convention)]
    if convention == "full":
        assert round(counted / 1e9, 3) == WESPEAKER_GMACS[name]


@pytest.mark.parametrize("frames, bins", [(200, 80), (37, 32), (21, 19)])
@pytest.mark.parametrize("reversible", ["partial", "full"])
@pytest.mark.parametrize("name", ["r34", "r50"])
def test_reversible_resnet_matches_hand_written_count(name, reversible, frames, bins):
    # 'full' zero-pads odd sizes to even before each 2x2 squeeze: 37 frames -> 19 -> 10 -> 5, 19 bins -> 10 -> 5 -> 3.
    counted = tuple(_model_macs(name, reversible, frames, bins, c) for c in macs.CONVENTIONS)
    assert counted == HAND_WRITTEN[name, reversible, frames, bins]


@pytest.mark.parametrize("reversible", ["none", "partial", "full"])
def test_training_forward_counts_the_same(reversible):
    # In training the couplings run as one custom_vjp per stage (counted once: its primal, a scan), BN uses batch
    # statistics: no multiply-adds more or less than inference.
    assert _model_macs("r34", reversible, 37, 32, "real", train=True) == _model_macs("r34", reversible, 37, 32, "real")
