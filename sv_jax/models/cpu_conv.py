"""oneDNN convolutions on CPU: the ResNets' convolutions and both their gradients as fast as PyTorch's.

XLA:CPU computes a convolution's gradient with respect to its weights as another convolution whose "kernel" is the
whole feature map, and its CPU emitters are slow at that shape: on the 2-core Xeon (AVX-512), one 3x3 conv
32 -> 32 on 16 x 80 x 200 took 0.09 s forward, 0.05 s for the input gradient and 0.21 s for the weight gradient,
where PyTorch (oneDNN) does all three in 0.14 s. Rewriting the weight gradient inside XLA (im2col patches and one
matmul, nine shifted matmuls) does not help: each materialises the 3x3 taps, and XLA:CPU's copies run at a few GB/s.
So on CPU the convolutions call oneDNN, the library PyTorch uses, through XLA's FFI (cpu_conv.cc): forward,
backward-data and backward-weights primitives on NHWC activations, 0.025 + 0.027 + 0.028 s for the conv above
(PyTorch 2.14, channels-last: 0.11 s for all three; NCHW: 0.14 s), and 0.06-0.07 s for the three at each deeper
stage's shape (PyTorch: 0.06-0.07 s). Measured 2026-12-02, one process at a time, best of 5.

`conv(x, kernel, strides, padding)` is a `jax.custom_vjp` whose three parts are each a `lax.platform_dependent`:
on CPU the oneDNN call, anywhere else `lax.conv_general_dilated` and its autodiff, the same HLO that XLA would build.
Where the process has several devices, each call is partitioned along the batch for a sharded jit (data parallel,
`custom_partitioning`): every device convolves its own rows, and the weight gradient is summed over the batch axes,
as XLA partitions its own convolutions. With one device (a CPU's default) the calls are plain.

Which lowering a model uses is `model.cpu_conv`:

- 'auto' (default): oneDNN when JAX's default backend is CPU, the model computes in float32 and the library can be
  built; otherwise XLA's convolutions, untouched (GPUs keep cuDNN; bfloat16 keeps XLA's).
- 'onednn': the same, but an error (one line, exit 2) if the library cannot be built or loaded.
- 'xla': XLA's convolutions everywhere.

The library is compiled on first use, like torch.utils.cpp_extension: `g++` with oneDNN's headers and library
(Debian/Ubuntu: `apt-get install g++ libdnnl-dev`), into `$SV_JAX_CACHE` (default ~/.cache/sv_jax), named by a hash
of the source and of jax's version, so a changed source or jax never loads a stale build. `python -m
sv_jax.build_cpu_conv` builds it ahead and prints where.

Costs: a custom call carries no FLOP count, so programs with oneDNN convolutions are counted on a copy with XLA's
(sv_jax.programs); the work is the same. oneDNN's scratchpads and kernel reorders are allocated per call outside
XLA's buffers, so compiled memory figures (profiling.xla_memory) do not include them (at most a few MB per conv).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import subprocess
import tempfile
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from cli import ConfigError

LOWERINGS = ("auto", "onednn", "xla")
SOURCE = pathlib.Path(__file__).with_name("cpu_conv.cc")
TARGETS = {"forward": "SvJaxConvForward", "backward_data": "SvJaxConvBackwardData",
           "backward_weights": "SvJaxConvBackwardWeights"}
DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
ENV_OVERRIDE = "SV_JAX_CPU_CONV"
BUILD_HINT = "the oneDNN convolutions need g++ and oneDNN: apt-get install g++ libdnnl-dev"


def library_path() -> pathlib.Path:
    """Where the build for this source and this jax lives."""
    digest = hashlib.sha256(SOURCE.read_bytes() + jax.__version__.encode()).hexdigest()[:16]
    cache = pathlib.Path(os.environ.get("SV_JAX_CACHE", pathlib.Path.home() / ".cache" / "sv_jax"))
    return cache / f"cpu_conv-{digest}.so"


def build() -> pathlib.Path:
    """Compiles cpu_conv.cc (if this source and jax have no build yet) and returns the library's path.

    Raises RuntimeError with the compiler's last lines when it fails. The build is written to a temporary file and
    renamed, so concurrent builds (test workers, processes of one job) never load a half-written library.
    """
    path = library_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler = os.environ.get("CXX", "g++")
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".so", delete=False) as tmp:
        partial = pathlib.Path(tmp.name)
    command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{jax.ffi.include_dir()}", str(SOURCE),
               "-o", str(partial), "-ldnnl"]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"no C++ compiler {compiler!r} ({BUILD_HINT})") from None
    if done.returncode:
        partial.unlink(missing_ok=True)
        last = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"building {SOURCE.name} failed ({BUILD_HINT}): {last}")
    os.replace(partial, path)
    return path


@functools.cache
def _load() -> str:
    """Builds and loads the library and registers its FFI targets; '' on success, else why not."""
    try:
        # RTLD_DEEPBIND: jaxlib carries its own oneDNN (3.7 in jax 0.10.2, on XLA's thread pool; DNNL_VERBOSE=1
        # shows both) whose symbols may be global in this process: the build binds to the libdnnl it was compiled
        # against, never to that copy, another ABI.
        library = ctypes.CDLL(str(build()), mode=os.RTLD_LOCAL | os.RTLD_DEEPBIND)
    except (RuntimeError, OSError) as error:
        return str(error)
    for target in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform="cpu")
    return ""


def _require() -> None:
    """At trace time of a oneDNN call: the library loaded and its targets registered."""
    reason = _load()
    if reason:
        raise RuntimeError(f"oneDNN convolutions unavailable: {reason}")


def unavailable_reason() -> str:
    """'' where the oneDNN convolutions can run, else why not (one line)."""
    return _load()


def resolve(lowering: str, dtype) -> str:
    """'onednn' or 'xla' for `model.cpu_conv` = `lowering` and a model computing in `dtype`. The environment
    variable SV_JAX_CPU_CONV ('onednn' or 'xla'), where set, decides for 'auto' (the test suite sets 'xla': see
    tests/conftest.py)."""
    if lowering == "auto" and os.environ.get(ENV_OVERRIDE):
        lowering = os.environ[ENV_OVERRIDE]
        if lowering not in LOWERINGS[1:]:
            raise ConfigError(f"unknown {ENV_OVERRIDE}={lowering!r}; choose 'onednn' or 'xla', or unset it")
    if lowering not in LOWERINGS:
        raise ConfigError(f"unknown model.cpu_conv {lowering!r}; choose one of {list(LOWERINGS)}")
    if lowering == "xla" or jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
        return "xla"
    reason = unavailable_reason()
    if reason and lowering == "onednn":
        raise ConfigError(f"model.cpu_conv='onednn': {reason}; or set model.cpu_conv='xla'")
    return "xla" if reason else "onednn"


# --- the oneDNN calls, partitioned along the batch ---------------------------------------------------------------

def _attributes(strides, padding) -> dict:
    return {"strides": np.asarray(strides, np.int64), "padding": np.asarray([p for pair in padding for p in pair],
                                                                             np.int64)}


def _ffi(target: str, shape, strides, padding):
    _require()
    call = jax.ffi.ffi_call(TARGETS[target], jax.ShapeDtypeStruct(tuple(shape), jnp.float32),
                            vmap_method="sequential")
    return lambda a, b: call(a, b, **_attributes(strides, padding))


def _batch_axes(sharding):
    spec = sharding.spec if isinstance(sharding, NamedSharding) else PartitionSpec()
    return spec[0] if len(spec) else None


def _rows(mesh, axes) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(axes, None, None, None))


def _batch_partitioned(target: str, rows_out: bool, rule: str):
    """The FFI call `target`(a, b, out_shape, strides, padding), partitioned along the batch of `a`.

    `rows_out`: the output has the batch's rows too (forward, input gradient) and each device computes its own;
    otherwise (weight gradient) each device's share is summed over the devices that split the batch.
    """
    def direct(a, b, out_shape, strides, padding):
        return _ffi(target, out_shape, strides, padding)(a, b)

    def partition(out_shape, strides, padding, mesh, arg_shapes, result_shape):
        axes = _batch_axes(arg_shapes[0].sharding)
        replicated = NamedSharding(mesh, PartitionSpec())

        def lower(a, b):  # this device's rows of a (and of b where b has rows)
            if rows_out:
                return direct(a, b, (a.shape[0], *out_shape[1:]), strides, padding)
            share = direct(a, b, out_shape, strides, padding)
            return lax.psum(share, axes) if axes is not None else share
        out = _rows(mesh, axes) if rows_out else replicated
        return mesh, lower, out, (_rows(mesh, axes), replicated if rows_out else _rows(mesh, axes))

    partitioned = custom_partitioning(direct, static_argnums=(2, 3, 4))
    partitioned.def_partition(partition=partition, sharding_rule=rule)
    return direct, partitioned


_CALLS = {"forward": _batch_partitioned("forward", True, "b h w c, i j c o -> b y z o"),
          "backward_data": _batch_partitioned("backward_data", True, "b y z o, i j c o -> b h w c"),
          "backward_weights": _batch_partitioned("backward_weights", False, "b h w c, b y z o -> i j c o")}


def _onednn(call: str):
    """The FFI call on whole arrays, or its batch-partitioned form where this process has several devices.

    A single device needs no partitioning, and custom_partitioning's callbacks make the program's persistent
    compilation-cache key differ from process to process (measured: a tiny train step recompiled by every run), so
    it is used only where a sharded jit can need it (several devices: forced host devices, emulations).
    """
    direct, partitioned = _CALLS[call]
    return partitioned if jax.device_count() > 1 else direct


# --- the convolution: oneDNN on CPU, XLA's anywhere else ---------------------------------------------------------

def _xla_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DIMENSION_NUMBERS)


def _out_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, ...]:
    spatial = tuple((size + lo + hi - k) // s + 1 for size, (lo, hi), k, s in
                    zip(x_shape[1:3], padding, kernel_shape[:2], strides))
    return (x_shape[0], *spatial, kernel_shape[3])


def _forward(x, kernel, strides, padding):
    out_shape = _out_shape(x.shape, kernel.shape, strides, padding)
    return lax.platform_dependent(
        x, kernel, cpu=lambda x, k: _onednn("forward")(x, k, out_shape, strides, padding),
        default=lambda x, k: _xla_conv(x, k, strides, padding))


def _backward_data(dy, kernel, x_shape, strides, padding):
    def xla(dy, kernel):
        x = jnp.zeros(x_shape, dy.dtype)  # a shape only: the VJP is linear in dy and does not read x
        return jax.vjp(lambda x: _xla_conv(x, kernel, strides, padding), x)[1](dy)[0]
    return lax.platform_dependent(
        dy, kernel, cpu=lambda dy, k: _onednn("backward_data")(dy, k, tuple(x_shape), strides, padding), default=xla)


def _backward_weights(x, dy, kernel_shape, strides, padding):
    def xla(x, dy):
        kernel = jnp.zeros(kernel_shape, dy.dtype)
        return jax.vjp(lambda k: _xla_conv(x, k, strides, padding), kernel)[1](dy)[0]
    return lax.platform_dependent(
        x, dy, cpu=lambda x, dy: _onednn("backward_weights")(x, dy, tuple(kernel_shape), strides, padding),
        default=xla)


def conv(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], padding: tuple[tuple[int, int], ...]):
    """A float32 NHWC x HWIO convolution with explicit padding ((top, bottom), (left, right)), groups 1, no
    dilation: oneDNN on CPU (the library must be loaded: `resolve`), XLA's elsewhere.

    A strided 1x1 convolution without padding (the shortcuts' projections) is the unit-stride one on the strided
    rows and columns: the same numbers, and it keeps off oneDNN 2.6's strided 1x1 backward-data kernel, which
    corrupted the heap at batch 1 per device (tiny config, 4 devices).
    """
    if kernel.shape[:2] == (1, 1) and all(p == (0, 0) for p in padding) and strides != (1, 1):
        x, strides = x[:, ::strides[0], ::strides[1], :], (1, 1)
    return _conv(x, kernel, strides, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, kernel, strides, padding):
    return _forward(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding):
    return _forward(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, dy):
    x, kernel = residuals
    return (_backward_data(dy, kernel, x.shape, strides, padding),
            _backward_weights(x, dy, kernel.shape, strides, padding))


_conv.defvjp(_conv_fwd, _conv_bwd)


def supported(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, batch_group_count=1) -> bool:
    """Whether `conv` computes this lax.conv_general_dilated call."""
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None:
        return False
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMENSION_NUMBERS)
    return (dims == nhwc and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
            and not isinstance(padding, str) and feature_group_count == 1 and batch_group_count == 1
            and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1))))


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None):
    """lax.conv_general_dilated's signature (what flax.linen.Conv calls): `conv` where it applies, else lax's."""
    if preferred_element_type is None and supported(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                                    dimension_numbers, feature_group_count, batch_group_count):
        return conv(lhs, rhs, tuple(int(s) for s in window_strides),
                    tuple((int(lo), int(hi)) for lo, hi in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count, batch_group_count, precision, preferred_element_type)
