"""What `python -m profiling.study.flops` and `python -m profiling.study.memory` share: flags and the printout."""

from __future__ import annotations

import json
import math
from typing import Any

from absl import flags
from ml_collections import config_flags


def define_flags(batch_size_help: str) -> None:
    """--config, --batch_size, --num_classes, --json (called by the two command modules, never at import here)."""
    config_flags.DEFINE_config_file("config", None, "an sv_jax config file", lock_config=True)
    flags.DEFINE_integer("batch_size", None, batch_size_help)
    flags.DEFINE_integer("num_classes", None, "ArcMargin classes; default from the config (17,982 for VoxCeleb2 "
                                              "with speed perturbation)")
    flags.DEFINE_bool("json", False, "print one JSON object instead of a table")
    flags.mark_flags_as_required(["config"])


def format_table(record: dict[str, Any]) -> str:
    """Two readable columns: bytes in MB (1e6), FLOP and MAC counts in G (1e9), other numbers as they are."""
    def cell(key, value):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return str(value)
        if "bytes" in key and "per_byte" not in key:
            return f"{value / 1e6:,.2f} MB"
        if ("flops" in key or "macs" in key) and "ratio" not in key and "per_byte" not in key:
            return f"{value / 1e9:,.3f} G"
        return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
    width = max(len(key) for key in record)
    return "\n".join(f"{key:<{width}}  {cell(key, value)}" for key, value in record.items())


def to_json(record: dict[str, Any]) -> str:
    """One line of strict JSON: a missing (NaN) figure becomes null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()})


def print_report(record: dict[str, Any]) -> None:
    print(to_json(record) if flags.FLAGS.json else format_table(record))
