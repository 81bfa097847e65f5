"""The reversible stages' exactness, checked on whatever device JAX runs: the CPU tests' checks, on the GPU.

    cases = parity_cases(inversion_blocks=64, gradient_blocks=32, stages=STAGES, models=((mode, block, blocks),))

tests/test_reversible.py shows on CPU that a stage's input is reconstructed from its output bit for bit and that
the custom_vjp gradients equal plain autodiff's. On a GPU, TF32 convolutions or a cuDNN algorithm chosen
differently for the backward pass's recomputation could break that: the pair stream (value, rounding residue) of
sv_jax/models/reversible.py gives back the input exactly only when F and G are recomputed with the same rounding.
Each case here is one of those checks at the tests' sizes (inversion at ResNet293's 64 couplings, input scales 5
and 1; gradients of the four stage kinds at 32 couplings), plus whole small reversible ResNets, whose gradients are
compared with the same model's stages differentiated by plain autodiff. All in float32, at JAX's default precision
(what training runs); a case out of tolerance runs again at 'highest' (no TF32), as a diagnosis. A case records
its largest absolute and relative error and its tolerance (profiling.gpu_check.report judges them); a case that
raised records its error.
"""

from __future__ import annotations

from typing import Callable
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from profiling.gpu_check import report
from profiling.gpu_check.report import q
from sv_jax.models import resnet
from sv_jax.models import reversible as rev

# (mode, block) -> (stage input channels, planes, squeeze first), as the model builds its stages (the tests' STAGES).
STAGES = {("partial", "basic"): (8, 8, False), ("partial", "bottleneck"): (16, 4, False),
          ("full", "basic"): (4, 8, True), ("full", "bottleneck"): (4, 8, True)}


def _normal(shape, seed: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def filled_variables(tree, seed: int):
    """Concrete variables for an abstract tree, as the tests fill them: kernels N(0, 1/fan_in), BN scales ~1,
    biases and means ~0, variances > 0 (no initializer to compile)."""
    rng = np.random.default_rng(seed)

    def leaf(path, spec):
        name, shape, noise = jax.tree_util.keystr(path), spec.shape, 0.1 * rng.normal(size=spec.shape)
        if "'var'" in name:
            return jnp.asarray(1.0 + np.abs(noise), spec.dtype)
        if "'scale'" in name:
            return jnp.asarray(1.0 + noise, spec.dtype)
        if "'mean'" in name or "'bias'" in name:
            return jnp.asarray(noise, spec.dtype)
        fan_in = int(np.prod(shape[-4:-1])) if "kernel" in name and len(shape) >= 4 else shape[0]
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(fan_in), spec.dtype)

    return jax.tree_util.tree_map_with_path(leaf, tree)


def _stage_params(num_blocks: int, convs, seed: int):
    stage = rev.ReversibleStage(num_blocks, convs, resnet.torch_default_kernel_init)
    x = jax.ShapeDtypeStruct((1, 4, 4, 2 * convs[0][1]), jnp.float32)
    return filled_variables(jax.eval_shape(lambda v: stage.init(jax.random.key(0), v, None, False), x), seed)["params"]


def plain_stage(params, x, unroll: bool = False):
    """rev.reversible_stage without its custom_vjp, differentiated by plain autodiff: the reference."""
    y, _, batch_stats = rev.stage_forward(params, x, unroll=unroll)
    return y, batch_stats


def errors(actual, expected) -> tuple[float, float]:
    """(largest |a - e|, largest ||a - e|| / ||e||) over the leaves of two pytrees."""
    pairs = list(zip(jax.tree_util.tree_leaves(actual), jax.tree_util.tree_leaves(expected), strict=True))
    return (max(float(jnp.max(jnp.abs(a - e))) for a, e in pairs),
            max(float(jnp.linalg.norm(a - e)) / max(float(jnp.linalg.norm(e)), 1e-30) for a, e in pairs))


def inversion(num_blocks: int, scale: float) -> tuple[float, float]:
    """A 'full' bottleneck stage (16 channels) run forward on a (4, 10, 12, 16) input, then inverted."""
    params = _stage_params(num_blocks, rev.coupling_convs("full", "bottleneck", 16, 8), seed=0)
    x = scale * _normal((4, 10, 12, 16), seed=1)
    y, y_lo, _ = jax.jit(rev.stage_forward)(params, x)
    return errors(jax.jit(rev.invert_stage)(params, y, y_lo), x)


def stage_gradients(num_blocks: int, mode: str, block: str) -> tuple[float, float]:
    """Gradients of a stage's loss (parameters, input, batch statistics): custom_vjp against plain autodiff."""
    channels, planes, squeeze = STAGES[mode, block]
    channels_in = 4 * channels if squeeze else channels
    params = _stage_params(num_blocks, rev.coupling_convs(mode, block, channels_in, planes), seed=2)
    x = _normal((4, 6, 7, channels), seed=3)  # odd T: 'full' pads it before squeezing
    weights = _normal((4, 3, 4, channels_in) if squeeze else (4, 6, 7, channels), seed=4)
    prepare = rev.squeeze if squeeze else (lambda v: v)

    def grads(stage):
        def loss(p, v):
            y, batch_stats = stage(p, prepare(v))
            return jnp.sum(jnp.sin(y) * weights), batch_stats
        return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)

    return errors(grads(rev.reversible_stage), grads(plain_stage))


def model_gradients(mode: str, block: str, num_blocks) -> tuple[float, float]:
    """A small reversible ResNet's gradients (parameters and input), custom_vjp against the same model with its
    stages differentiated by plain autodiff (rev.reversible_stage patched while that copy is traced)."""
    model = resnet.ResNet(block=block, num_blocks=num_blocks, width=8, embed_dim=16, reversible=mode)
    feats, weights = _normal((4, 40, 24), seed=5), _normal((4, 16), seed=6)
    variables = filled_variables(jax.eval_shape(model.init, jax.random.key(0), feats), seed=7)

    def grads():  # a new function each time: the patched copy must be traced afresh, not found in a cache
        def loss(params, x):
            y, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                               mutable=["batch_stats"])
            return jnp.sum(jnp.sin(y) * weights)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(variables["params"], feats)

    custom = grads()
    with mock.patch.object(rev, "reversible_stage", plain_stage):
        plain = grads()
    return errors(custom, plain)


def _case(name: str, precision: str, tolerance: float, compute: Callable[[], tuple[float, float]]) -> dict:
    case = {"name": name, "precision": precision, "tolerance": tolerance}
    try:
        max_abs, rel = compute()
    except Exception as error:  # pylint: disable=broad-except  # one case failing keeps the others
        return {**case, "error": f"{type(error).__name__}: {error}", "rel": q(None, "1", "measured: raised")}
    how = f"measured: on {jax.devices()[0].device_kind}, float32, matmul/conv precision {precision!r}"
    return {**case, "max_abs": q(max_abs, "1", how), "rel": q(rel, "1", how)}


def parity_cases(*, inversion_blocks: int, gradient_blocks: int, stages, models,
                 diagnose: str | None = "highest") -> list[dict]:
    """Every check at JAX's default precision (as training runs); a case out of tolerance is run again under
    jax.default_matmul_precision(`diagnose`), so that the report can say whether TF32 is the cause."""
    checks = [(f"inversion, {inversion_blocks} bottleneck couplings, input scale {scale:g}", report.INVERSION_TOLERANCE,
               lambda s=scale: inversion(inversion_blocks, s)) for scale in (5.0, 1.0)]
    checks += [(f"gradients, {gradient_blocks} {mode} {block} couplings", report.GRADIENT_TOLERANCE,
                lambda m=mode, b=block: stage_gradients(gradient_blocks, m, b)) for mode, block in stages]
    checks += [(f"gradients, ResNet {block} {tuple(num_blocks)} width 8 '{mode}'", report.GRADIENT_TOLERANCE,
                lambda m=mode, b=block, n=num_blocks: model_gradients(m, b, n)) for mode, block, num_blocks in models]
    cases = []
    for name, tolerance, compute in checks:
        cases.append(_case(name, "default", tolerance, compute))
        rel = cases[-1]["rel"]["value"]
        if diagnose and (rel is None or rel > tolerance):
            with jax.default_matmul_precision(diagnose):
                cases.append(_case(name, diagnose, tolerance, compute))
    return cases
