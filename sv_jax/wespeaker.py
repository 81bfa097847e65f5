"""WeSpeaker checkpoints <-> sv_jax variables: the name and layout mapping, both ways.

WeSpeaker (wenet-e2e/wespeaker) publishes its trained models as a PyTorch state dict (`avg_model.pt`, the average
of the last checkpoints). Its ResNets (`wespeaker/models/resnet.py`) and Gemini DF-ResNets
(`wespeaker/models/gemini_dfresnet.py`) are the models of sv_jax/models layer for layer, so the mapping is one of
names and layouts only:

| sv_jax variable (Flax path)                 | WeSpeaker key (ResNet)            | WeSpeaker key (DF-ResNet)          |
|---------------------------------------------|-----------------------------------|------------------------------------|
| backbone/stem/{conv,bn}                     | conv1, bn1                        | downsample_layers.0.{0,1}          |
| backbone/downsample{s}/{conv,bn}            |                                   | downsample_layers.{s}.{0,1}        |
| backbone/layer{s}_{i}/conv_bn{k}/{conv,bn}  | layer{s}.{i}.conv{k}, .bn{k}      | stages.{s-1}.{i}.conv{k}, .bn{k}   |
| backbone/layer{s}_{i}/shortcut/{conv,bn}    | layer{s}.{i}.shortcut.{0,1}       |                                    |
| backbone/seg_1/{kernel,bias}                | seg_1.{weight,bias}               | seg_1.{weight,bias}                |
| head/weight (ArcMarginProduct)              | projection.weight                 | projection.weight                  |

Leaves and layouts:
- a convolution's `kernel` is HWIO; PyTorch's `weight` is OIHW (`transpose(3, 2, 0, 1)`). sv_jax's image is NHWC
  with frequency as height and time as width, WeSpeaker's NCHW (B, 1, F, T): the same H and W, so kernels need no
  flip or swap of their spatial axes; a depthwise kernel is (3, 3, 1, C) here and (C, 1, 3, 3) there;
- BN `scale`, `bias`, `mean`, `var` are `weight`, `bias`, `running_mean`, `running_var`; both use eps 1e-5 and
  PyTorch's momentum 0.1 (Flax's 0.9). PyTorch's `num_batches_tracked` is not a model variable (it only matters
  with momentum=None): it is ignored on import and written as 0 on export;
- Linear `weight` is (out, in), Dense `kernel` (in, out). TSTP flattens its statistics channel-major in both (see
  sv_jax/models/pooling.py), so `seg_1` needs no permutation of its inputs;
- the head: sv_jax's ArcMarginProduct `weight` is (embed_dim, classes), WeSpeaker's `projection.weight` (classes,
  embed_dim).

Only plain models map (model.reversible='none': WeSpeaker has no reversible models) with one embedding layer
(WeSpeaker's default `two_emb_layer=False`; `seg_bn_1`/`seg_2` keys are reported as unexpected).

This module needs numpy only (no jax, no torch): sv_jax.commands reads `.pt` files with torch and hands plain arrays
here, and profiling/study/torch_reference.py loads Flax variables into its PyTorch models with it.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, Mapping

import numpy as np

HEAD_KEY = "projection.weight"
_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_WRAPPER_KEYS = ("state_dict", "model")  # {'state_dict': sd} / {'model': sd}: common ways to save one


class MappingError(ValueError):
    """A state dict that does not fit the model: every missing, unexpected and mis-shaped key in one message."""


def _conv_bn_names(module_path: tuple[str, ...], dfresnet: bool) -> tuple[str, str]:
    """The WeSpeaker (conv, bn) module names of sv_jax's _ConvBN at `module_path` (under the backbone)."""
    top = module_path[0]
    if top == "stem":
        return ("downsample_layers.0.0", "downsample_layers.0.1") if dfresnet else ("conv1", "bn1")
    match = re.fullmatch(r"downsample(\d)", top)
    if match and dfresnet and len(module_path) == 1:
        return f"downsample_layers.{match[1]}.0", f"downsample_layers.{match[1]}.1"
    match = re.fullmatch(r"layer(\d)_(\d+)", top)
    if match and len(module_path) == 2:
        stage, index = int(match[1]), int(match[2])
        block = f"stages.{stage - 1}.{index}" if dfresnet else f"layer{stage}.{index}"
        child = module_path[1]
        conv = re.fullmatch(r"conv_bn(\d)", child)
        if conv:
            return f"{block}.conv{conv[1]}", f"{block}.bn{conv[1]}"
        if child == "shortcut" and not dfresnet:
            return f"{block}.shortcut.0", f"{block}.shortcut.1"
    raise MappingError(f"sv_jax layer {'/'.join(module_path)} has no WeSpeaker counterpart (is the model reversible? "
                       "WeSpeaker's models are plain: model.reversible='none')")


def torch_name(path: tuple[str, ...], dfresnet: bool) -> str:
    """The WeSpeaker state-dict key of an sv_jax variable, e.g. ('backbone', 'layer1_0', 'conv_bn1', 'conv',
    'kernel') -> 'layer1.0.conv1.weight'. `path` starts with 'backbone' or 'head' (params and batch_stats alike)."""
    if path[0] == "head":
        if path[1:] != ("weight",):
            raise MappingError(f"head variable {'/'.join(path)} has no WeSpeaker counterpart")
        return HEAD_KEY
    if path[0] != "backbone":
        raise MappingError(f"variable {'/'.join(path)} is neither backbone nor head")
    module, leaf = path[1:-2], path[-2:]
    if path[1] == "seg_1" and len(path) == 3:
        return {"kernel": "seg_1.weight", "bias": "seg_1.bias"}[path[2]]
    conv, bn = _conv_bn_names(module, dfresnet)
    if leaf == ("conv", "kernel"):
        return f"{conv}.weight"
    if leaf[0] == "bn" and leaf[1] in _BN_LEAVES:
        return f"{bn}.{_BN_LEAVES[leaf[1]]}"
    raise MappingError(f"sv_jax variable {'/'.join(path)} has no WeSpeaker counterpart")


def _relayout(array: np.ndarray, kernel_axes: tuple[int, int, int, int]) -> np.ndarray:
    """Kernels (4-d) transposed by `kernel_axes`, matrices transposed, vectors unchanged."""
    array = np.asarray(array)
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(kernel_axes))
    return np.ascontiguousarray(array.T) if array.ndim == 2 else array


def to_torch_layout(array: np.ndarray) -> np.ndarray:
    """An sv_jax value in PyTorch's layout: HWIO -> OIHW, (in, out) -> (out, in); vectors unchanged."""
    return _relayout(array, (3, 2, 0, 1))


def from_torch_layout(array: np.ndarray) -> np.ndarray:
    """A PyTorch value in sv_jax's layout: OIHW -> HWIO, (out, in) -> (in, out); vectors unchanged."""
    return _relayout(array, (2, 3, 1, 0))


def flatten(tree: Mapping, prefix: tuple = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, leaf) pairs of a nested mapping."""
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from flatten(value, prefix + (str(key),))
        else:
            yield prefix + (str(key),), value


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def is_dfresnet(variables: Mapping) -> bool:
    return any(str(name).startswith("downsample") for name in variables["params"]["backbone"])


def export_state_dict(variables: Mapping, include_num_batches_tracked: bool = True) -> dict[str, np.ndarray]:
    """sv_jax variables ({'params': {'backbone', 'head'?}, 'batch_stats': {'backbone'}}) -> a WeSpeaker state dict
    of numpy arrays (float32, PyTorch layouts), with `num_batches_tracked` = 0 per BN as PyTorch writes it."""
    dfresnet = is_dfresnet(variables)
    state = {}
    for collection in ("params", "batch_stats"):
        for path, value in flatten(variables.get(collection, {})):
            state[torch_name(path, dfresnet)] = to_torch_layout(np.asarray(value, np.float32))
    if include_num_batches_tracked:
        for name in [n for n in state if n.endswith(".running_mean")]:
            state[name[:-len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return state


def unwrap(state: Mapping) -> dict:
    """A state dict's tensors: unwrapped from {'state_dict': ...} or {'model': ...}, without DistributedDataParallel's
    'module.' prefix."""
    if not any(hasattr(value, "shape") for value in state.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return dict(state)


def import_state_dict(state: Mapping[str, np.ndarray], abstract: Mapping, source: str = "the checkpoint",
                      hint: str = "") -> tuple[dict, list[str]]:
    """A WeSpeaker state dict (numpy arrays) -> sv_jax variables shaped as `abstract` (the backbone's params and
    batch_stats, e.g. from jax.eval_shape of model.init; anything with .shape), plus the head's weight when
    `state` has `projection.weight`. Returns (variables, notes: what was skipped and why).

    Raises MappingError listing every missing, unexpected and mis-shaped key (and `hint`, e.g. the config keys that
    set the shapes)."""
    dfresnet = is_dfresnet(abstract)
    expected: dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]] = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten(abstract[collection]):
            if path[0] == "head":
                continue
            shape = tuple(to_torch_layout(np.empty(tuple(leaf.shape), np.bool_)).shape)
            expected[torch_name(path, dfresnet)] = (collection, path, shape)
    notes = []
    present = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    head = present.pop(HEAD_KEY, None)
    other_projection = sorted(k for k in present if k.startswith("projection."))
    for key in other_projection:
        present.pop(key)
    if other_projection:
        notes.append(f"skipped {other_projection}: a head sv_jax does not have (it has ArcMarginProduct, "
                     f"{HEAD_KEY})")
    missing = sorted(set(expected) - set(present))
    unexpected = sorted(set(present) - set(expected))
    misshaped = sorted(f"{k} {tuple(np.shape(present[k]))} (model: {expected[k][2]})" for k in set(expected) & set(
        present) if tuple(np.shape(present[k])) != expected[k][2])
    if head is not None and np.ndim(head) != 2:
        misshaped.append(f"{HEAD_KEY} {tuple(np.shape(head))} (model: (classes, embed_dim))")
    embed_dim = expected["seg_1.bias"][2][0] if "seg_1.bias" in expected else None
    if head is not None and np.ndim(head) == 2 and embed_dim is not None and np.shape(head)[1] != embed_dim:
        misshaped.append(f"{HEAD_KEY} {tuple(np.shape(head))} (model: (classes, {embed_dim}))")
    if missing or unexpected or misshaped:
        parts = [f"{label} {len(keys)}: {', '.join(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
        raise MappingError(f"{source} does not fit the model ({'; '.join(parts)})" + (f"; {hint}" if hint else ""))
    variables: dict = {"params": {}, "batch_stats": {}}
    for name, (collection, path, _) in expected.items():
        _set(variables[collection], path, from_torch_layout(np.asarray(present[name], np.float32)))
    if head is not None:
        _set(variables["params"], ("head", "weight"), from_torch_layout(np.asarray(head, np.float32)))
    else:
        notes.append(f"no {HEAD_KEY} in {source}: imported without a head (training starts a new one)")
    return variables, notes


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch `.pt` state dict as float32/int numpy arrays (unwrapped, see `unwrap`).

    Needs torch (an optional dependency, imported here only); raises ImportError with the install line when absent,
    FileNotFoundError, or ValueError naming the file when it is not a state dict torch can read."""
    import pathlib  # pylint: disable=import-outside-toplevel
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise ImportError("reading a PyTorch checkpoint needs torch, an optional dependency: pip install torch (the "
                          "CPU build: pip install -r requirements-bench.txt)") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, UnpicklingError, EOFError, zipfile errors
        raise ValueError(f"{path}: not a PyTorch checkpoint torch can read ({type(error).__name__}: "
                         f"{(str(error).splitlines() or [''])[0][:200]})") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path}: holds a {type(loaded).__name__}, not a state dict (a mapping of names to tensors)")
    state = unwrap(loaded)
    arrays = {}
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor: is this a state dict?")
        value = value.detach().to("cpu")
        arrays[str(name)] = (value.float() if value.is_floating_point() else value).numpy()
    return arrays
