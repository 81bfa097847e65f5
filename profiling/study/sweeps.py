"""Sweep configs (configs/sweeps/): a base config plus per-variant overrides, and how --quick shrinks them.

    sweep = load_config_file("configs/sweeps/depth.py")
    for name in variant_names(sweep):
        config = variant_config(sweep, name, quick=False, num_devices=1)   # a training config, checked

Overrides are nested dicts (`{"model": {"name": "ResNet18"}}`); an unknown key is an error naming the key and the
variant. `command_line_flags` turns them into the `--config.<key>=<value>` flags of `python -m sv_jax.main`, so a
variant can be trained exactly as it was measured.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from typing import Any, Mapping

import ml_collections
from ml_collections.config_flags import config_flags

import cli
from sv_jax import parallel, tasks


def load_config_file(path: str | os.PathLike) -> ml_collections.ConfigDict:
    """`get_config()` of a Python config file, loaded by the parser behind --config (unlocked)."""
    if not pathlib.Path(path).is_file():
        raise cli.MissingInputError(f"config file {path} does not exist")
    return config_flags.ConfigFileFlagParser("config", lock_config=False).parse(os.fspath(path))


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], where: str,
                    prefix: str = "") -> None:
    """Sets nested `overrides` ({"model": {"name": "ResNet18"}}) on `config`; an unknown key is a ValueError that
    names it and `where` it came from."""
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if key not in config:
            raise cli.ConfigError(f"{where}: unknown config key {dotted!r}; "
                             f"{prefix or 'top level'} has {sorted(config.keys())}")
        if _is_map(value) and isinstance(config[key], ml_collections.ConfigDict):
            apply_overrides(config[key], value, where, f"{dotted}.")
        else:
            config[key] = tuple(value) if isinstance(value, list) else value


def flatten(overrides: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """[("model.name", "ResNet18"), ...] from nested overrides, in order."""
    out = []
    for key, value in overrides.items():
        if _is_map(value):
            out.extend(flatten(value, f"{prefix}{key}."))
        else:
            out.append((f"{prefix}{key}", value))
    return out


def command_line_flags(overrides: Mapping[str, Any]) -> list[str]:
    """`--config.<key>=<value>` flags that make sv_jax.main apply the same overrides."""
    def text(value):
        if isinstance(value, (tuple, list)):
            return "(" + ",".join(text(v) for v in value) + ("," if len(value) == 1 else "") + ")"
        return str(value)
    return [f"--config.{key}={text(value)}" for key, value in flatten(overrides)]


def _is_map(value: Any) -> bool:
    return isinstance(value, (Mapping, ml_collections.ConfigDict))


def merge(*nested: Mapping[str, Any]) -> dict[str, Any]:
    """Nested overrides combined left to right, as plain dicts."""
    out: dict[str, Any] = {}
    for overrides in nested:
        for key, value in overrides.items():
            if _is_map(value) and _is_map(out.get(key)):
                out[key] = merge(out[key], value)
            else:
                out[key] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    return {k: _plain(v) for k, v in value.items()} if _is_map(value) else value


@dataclasses.dataclass(frozen=True)
class Settings:
    """How a sweep is measured, after --quick; stored in sweep.json."""

    quick: bool
    window_s: float
    repetitions: int
    cooldown_s: float
    warmup_steps: int
    idle_s: float
    train: bool


def settings(sweep: ml_collections.ConfigDict, quick: bool, train: bool | None = None) -> Settings:
    source = sweep.quick if quick else sweep.measure
    if source.repetitions < 1 or source.window_s <= 0:
        raise cli.ConfigError(f"sweep {sweep.name}: need repetitions >= 1 and window_s > 0, got "
                         f"{source.repetitions} and {source.window_s}")
    default_train = sweep.quick.train if quick else sweep.train.enabled
    return Settings(quick, float(source.window_s), int(source.repetitions), float(source.cooldown_s),
                    int(source.warmup_steps), float(source.idle_s), default_train if train is None else train)


def variant_overrides(sweep: ml_collections.ConfigDict, name: str) -> dict[str, Any]:
    """The nested overrides that turn the base config into variant `name` (the sweep's, then the variant's)."""
    variants = dict(sweep.variants)
    if name not in variants:
        raise cli.ConfigError(f"sweep {sweep.name} has no variant {name!r}; it has {variant_names(sweep)}")
    return merge(sweep.overrides, variants[name])


def variant_names(sweep: ml_collections.ConfigDict) -> list[str]:
    """The sweep's variants in the order they run and are plotted."""
    names = [name for name, _ in sweep.variants]
    if len(set(names)) != len(names):
        raise cli.ConfigError(f"sweep {sweep.name}: duplicate variant names in {names}")
    return names


def variant_config(sweep: ml_collections.ConfigDict, name: str, quick: bool, num_devices: int
                   ) -> ml_collections.ConfigDict:
    """The variant's config as measured: with --quick, its global batch divided by `quick.batch_divisor` (rounded
    up to the device count) and chunks of `quick.num_frames`."""
    config = load_config_file(sweep.base_config)
    apply_overrides(config, variant_overrides(sweep, name), f"sweep {sweep.name}, variant {name}")
    tasks.get(config).create_model(config.model, 2)  # an unknown model name fails here, naming the choices
    if quick:
        config.data.batch_size = parallel.round_up(math.ceil(config.data.batch_size / sweep.quick.batch_divisor),
                                                   num_devices)
        config.data.num_frames = sweep.quick.num_frames
    return config
