"""Multiply-adds (MACs) of a JAX program, counted from its jaxpr: the model code is the only architecture description.

    from profiling import macs
    macs.count_macs(lambda v, x: backbone.apply(v, x), variables, feats, convention="real")

What it counts: every `conv_general_dilated` and `dot_general` of the traced program (`jax.make_jaxpr`), in every
nested jaxpr (jit, closed_call, custom_jvp/custom_vjp calls, remat/checkpoint, scan bodies times their length, cond
branches, shard_map bodies times their devices). One multiply-add is one MAC (XLA's cost analysis counts it as 2
FLOPs). Convolutions are counted in one of two conventions:

- 'real': only kernel taps that land on real input, not on padding (nor, with lhs dilation, on the holes between
  dilated input elements). This is what XLA's cost analysis counts, so 2 x this is the floor its FLOPs should meet.
- 'full': every kernel tap of every output position, padding included: WeSpeaker's convention (the GMACs of its
  README, e.g. ResNet34 4.528 G at 200 frames x 80 bins, against 4.345 G 'real').

Taps factor over the spatial axes, so a convolution's count is
batch x (rhs input features) x (output features) x prod over spatial axes of taps(axis), where taps(axis) sums,
over the output positions of that axis, the kernel taps counted by the convention. The rhs input features are the
lhs features / feature_group_count, and the output batch is the lhs batch / batch_group_count, so grouped and
batch-grouped convolutions (as in gradients of grouped ones) count right too. dot_general: batch dims x contracting
dims x lhs free dims x rhs free dims.

What it leaves out: everything elementwise or reducing (BatchNorm, ReLU, residual adds, pooling, softmax, the
loss): these are not multiply-adds, about 1% of a ResNet's FLOPs. Other primitives that multiply and add inside
(fft, lu, triangular_solve, cumsum) are not counted either; the ResNets have none. The count is that of the program
as traced, before any compiler optimisation, so XLA's fusion (which can recompute elementwise chains) and its
choice of convolution algorithm do not enter it, nor does anything a backend adds (custom calls, collectives).

Why it exists: a check on XLA's `cost_analysis()` (profiling/flops.py) that depends neither on XLA's optimiser nor
on a hand-written description of the architecture, which could drift from the model code: the meter reads the
model's own program, reversible couplings, squeezes and all.

Higher-order primitives:
- jit (pjit), closed_call, core_call, remat/checkpoint: the body once.
- custom_jvp_call, custom_vjp_call(_jaxpr): the primal function once (`call_jaxpr` / `fun_jaxpr`); the JVP rule or
  the fwd/bwd pair are not part of the traced program. A program that differentiates such a function contains the
  rules' equations themselves (jax.grad inlines them), and they are counted there.
- scan: the body x `length` (XLA's cost analysis counts it once).
- cond: the most expensive branch (an upper bound; which branch runs is not known from the program).
- while (while_loop, fori_loop with a traced trip count): the trip count is not known, so it cannot be counted:
  ValueError. (fori_loop with static bounds traces to a scan and is counted.)
- shard_map: the per-device body x the devices of its newly manual mesh axes, so that the count is the whole
  (global) program's, like every other count here; XLA's compiled cost is per device.
- custom_linear_solve: its `solve` jaxpr once (matvec and the transposed ones serve autodiff).
- any other primitive with jaxpr-valued params (a ClosedJaxpr or Jaxpr, possibly inside tuples or lists): each of
  those jaxprs walked once and summed.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import jax
import numpy as np
from jax.extend import core as _jax_core

CONVENTIONS = ("real", "full")

# Higher-order primitives whose params hold exactly one sub-jaxpr, run once: primitive name -> param names to look
# up (the first present one is used; names differ between jax versions).
_CALL_PARAMS = {
    "jit": ("jaxpr",),
    "pjit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "remat": ("jaxpr",),
    "remat2": ("jaxpr",),
    "checkpoint": ("jaxpr",),
    "custom_jvp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
    "custom_lin": (),  # linearization bookkeeping of custom_vjp (no primal computation of its own)
}


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")


def count_macs(fn: Callable[..., Any], *args, convention: str = "real", **kwargs) -> int:
    """Multiply-adds of `fn(*args, **kwargs)`: its convolutions and dot_generals, nested jaxprs included.

    Array leaves of `args` and `kwargs` (jax or numpy arrays, or `jax.ShapeDtypeStruct`s, so that nothing needs to
    be allocated) are traced; every other leaf (Python numbers, strings, flags such as `train=True`) is passed to
    `fn` as it is. Raises ValueError for an unknown convention and for programs with a `while` loop.
    """
    _check_convention(convention)
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
    traced = [i for i, leaf in enumerate(leaves) if _is_array_like(leaf)]

    def flat_fn(*arrays):
        values = list(leaves)
        for index, array in zip(traced, arrays):
            values[index] = array
        call_args, call_kwargs = jax.tree_util.tree_unflatten(treedef, values)
        return fn(*call_args, **call_kwargs)

    closed = jax.make_jaxpr(flat_fn)(*[leaves[i] for i in traced])
    return jaxpr_macs(closed, convention)


def jaxpr_macs(jaxpr, convention: str = "real") -> int:
    """`count_macs` of an already traced program (a ClosedJaxpr or Jaxpr)."""
    _check_convention(convention)
    return _walk(_open(jaxpr), convention)


def _is_array_like(leaf: Any) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, jax.ShapeDtypeStruct))


def _open(jaxpr):
    """The Jaxpr of a ClosedJaxpr (or the Jaxpr itself)."""
    return getattr(jaxpr, "jaxpr", jaxpr)


def _is_jaxpr(value: Any) -> bool:
    return isinstance(value, (_jax_core.ClosedJaxpr, _jax_core.Jaxpr))


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[Any]:
    """Every ClosedJaxpr or Jaxpr among an equation's params, also inside tuples and lists."""
    for value in params.values():
        stack = [value]
        while stack:
            item = stack.pop()
            if _is_jaxpr(item):
                yield item
            elif isinstance(item, (tuple, list)):
                stack.extend(reversed(item))


def _walk(jaxpr, convention: str) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_macs(eqn, convention)
    return total


def _eqn_macs(eqn, convention: str) -> int:
    name, params = eqn.primitive.name, eqn.params
    if name == "conv_general_dilated":
        return _conv_macs(eqn, convention)
    if name == "dot_general":
        return _dot_macs(eqn)
    if name == "while":
        raise ValueError("cannot count the MACs of a `while` primitive (lax.while_loop, or fori_loop with traced "
                         "bounds): its trip count is not part of the program; use lax.scan or static bounds")
    if name == "scan":
        return int(params["length"]) * _walk(_open(params["jaxpr"]), convention)
    if name == "cond":
        return max((_walk(_open(branch), convention) for branch in params["branches"]), default=0)
    if name == "shard_map":
        mesh = params["mesh"]
        axes = params.get("newly_manual_axes", params.get("manual_axes", ()))
        devices = math.prod(int(mesh.shape[axis]) for axis in axes)
        return devices * _walk(_open(params["jaxpr"]), convention)
    if name == "custom_linear_solve":  # the forward runs `solve`; matvec and the transposes are for autodiff
        solve = params["jaxprs"].solve
        return 0 if solve is None else _walk(_open(solve), convention)
    if name in _CALL_PARAMS:
        for key in _CALL_PARAMS[name]:
            if key in params and _is_jaxpr(params[key]):
                return _walk(_open(params[key]), convention)
        if not _CALL_PARAMS[name]:
            return 0
        raise ValueError(f"{name}: none of the params {_CALL_PARAMS[name]} holds a jaxpr "
                         f"(params: {sorted(params)}); this jax version names them otherwise")
    # Unknown primitive: walk each sub-jaxpr once (none for first-order primitives).
    return sum(_walk(_open(sub), convention) for sub in _sub_jaxprs(params))


# --- dot_general -------------------------------------------------------------------------------------------------

def _dot_macs(eqn) -> int:
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    lhs, rhs = (tuple(int(d) for d in v.aval.shape) for v in eqn.invars[:2])
    batch = math.prod(lhs[d] for d in lhs_batch)
    contract = math.prod(lhs[d] for d in lhs_contract)
    lhs_free = math.prod(n for d, n in enumerate(lhs) if d not in (*lhs_contract, *lhs_batch))
    rhs_free = math.prod(n for d, n in enumerate(rhs) if d not in (*rhs_contract, *rhs_batch))
    return batch * contract * lhs_free * rhs_free


# --- conv_general_dilated ----------------------------------------------------------------------------------------

def conv_taps(in_size: int, kernel: int, stride: int, padding: tuple[int, int], convention: str = "real",
              lhs_dilation: int = 1, rhs_dilation: int = 1) -> int:
    """Kernel taps summed over the output positions of one spatial axis of a convolution.

    'full' counts all `kernel` taps of every output position; 'real' only those that land on an input element:
    inside [0, in_size) after padding `padding` = (lo, hi) (negative padding crops), and, with lhs dilation d, on
    a multiple of d of the dilated input (not on the d - 1 inserted holes).
    """
    _check_convention(convention)
    lo = padding[0]
    dilated_in = (in_size - 1) * lhs_dilation + 1 if in_size > 0 else 0
    out_size = _conv_out_size(in_size, kernel, stride, padding, lhs_dilation, rhs_dilation)
    if convention == "full":
        return out_size * kernel
    positions = (np.arange(out_size)[:, None] * stride - lo) + np.arange(kernel)[None, :] * rhs_dilation
    real = (positions >= 0) & (positions < dilated_in) & (positions % lhs_dilation == 0)
    return int(real.sum())


def _conv_out_size(in_size: int, kernel: int, stride: int, padding: tuple[int, int], lhs_dilation: int,
                   rhs_dilation: int) -> int:
    dilated_in = (in_size - 1) * lhs_dilation + 1 if in_size > 0 else 0
    dilated_kernel = (kernel - 1) * rhs_dilation + 1 if kernel > 0 else 0
    return max(0, (dilated_in + padding[0] + padding[1] - dilated_kernel) // stride + 1)


def _conv_macs(eqn, convention: str) -> int:
    params = eqn.params
    lhs, rhs = (tuple(int(d) for d in v.aval.shape) for v in eqn.invars[:2])
    out = tuple(int(d) for d in eqn.outvars[0].aval.shape)
    numbers = params["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec
    padding = params["padding"]
    if isinstance(padding, str):  # make_jaxpr resolves 'SAME'/'VALID'; a string here would be a new jax
        raise ValueError(f"conv_general_dilated with unresolved padding {padding!r}")
    spatial = len(lhs_spec) - 2
    strides = params["window_strides"]
    lhs_dilation = params.get("lhs_dilation") or (1,) * spatial
    rhs_dilation = params.get("rhs_dilation") or (1,) * spatial
    taps = 1
    for axis in range(spatial):
        in_size, kernel = lhs[lhs_spec[2 + axis]], rhs[rhs_spec[2 + axis]]
        geometry = (in_size, kernel, int(strides[axis]), tuple(int(p) for p in padding[axis]))
        dilation = (int(lhs_dilation[axis]), int(rhs_dilation[axis]))
        if _conv_out_size(*geometry, *dilation) != out[out_spec[2 + axis]]:  # the params were misread
            raise ValueError(f"conv_general_dilated: spatial axis {axis} of {lhs} -> {out} does not follow from "
                             f"kernel {kernel}, stride {geometry[2]}, padding {geometry[3]}, dilation {dilation}")
        taps *= conv_taps(*geometry, convention, *dilation)
    # out batch = lhs batch / batch_group_count; rhs input features = lhs features / feature_group_count.
    return out[out_spec[0]] * rhs[rhs_spec[1]] * out[out_spec[1]] * taps
