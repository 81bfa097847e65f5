"""The dependency rules of DESIGN.md: what a module imports itself, and what it really pulls in on import."""

import ast
import json
import pathlib
import subprocess
import sys

import pytest


def _modules_after_import(*modules: str) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("modules, forbidden", [
    # Models and optimisers work without TensorFlow or the data pipeline.
    (("sv_jax.models", "sv_jax.optim", "sv_jax.step"), ("tensorflow", "data_pipeline")),
    # Profiling measures the train step without importing the trainer (nor, through it, TensorFlow).
    (("profiling.benchmark", "profiling.flops", "profiling.memory", "profiling.hooks", "profiling.flops_vs_joules",
      "profiling.sweep", "profiling.study", "profiling.study_report"),
     ("sv_jax.train", "tensorflow")),
])
def test_module_does_not_import(modules, forbidden):
    loaded = _modules_after_import(*modules)
    offending = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not offending, f"importing {modules} loads {offending[:5]}"


def test_data_pipeline_never_imports_jax_or_sv_jax():
    # Statically: TensorFlow 2.21 itself loads jax when present, so sys.modules cannot tell whose import it was.
    root = pathlib.Path(__file__).resolve().parents[1] / "data_pipeline"
    offending = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offending += [f"{path.name}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in ("jax", "jaxlib", "flax", "optax", "sv_jax", "profiling")]
    assert len(list(root.glob("*.py"))) > 5 and not offending, offending
