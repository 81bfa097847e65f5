"""The house's dependency rules (docs/design.md), checked on the import graph of the project's own files.

Three layers, imports only downward: the meters (profiling/, except the study layer) import no sv_jax and no
data_pipeline; the trainer (sv_jax/) uses the meters; the study layer (profiling/study/ and the GPU acceptance
command profiling/gpu_check/) uses both and nothing outside it imports it.
Beneath them data_pipeline/ never imports jax or sv_jax, and cli/ (errors and the command runner) imports nothing of
the project. No circle of files anywhere, and no two package folders whose modules import each other. The graph
is read statically (every import statement, those inside functions too), so a lazy import cannot hide an edge; the
rules are tested on planted violations as well, so a checker that stopped seeing edges would fail.
"""

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "configs", "data_pipeline", "profiling", "sv_jax")
THIRD_PARTY_FORBIDDEN_IN_DATA = ("jax", "jaxlib", "flax", "optax", "orbax")
STUDY_LAYER = ("profiling.study", "profiling.gpu_check")  # import anything; nothing outside them imports them


def module_name(root: pathlib.Path, path: pathlib.Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path, packages=PACKAGES) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: project modules it imports}, {module: top-level names of everything it imports})."""
    files = {module_name(root, p): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph, external = {}, {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges, names = set(), set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's own package, `level` steps up
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
                # `from pkg import mod` depends on pkg.mod; `from pkg import name` on pkg itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for target in targets:
                names.add(target.split(".")[0])
                # The longest project module the target names (`from pkg import mod` imports pkg.mod).
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name], external[name] = edges, names
    return graph, external


def _in_study_layer(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in STUDY_LAYER)


def _is_meter(module: str) -> bool:
    return module.split(".")[0] == "profiling" and not _in_study_layer(module)


def _folder(module: str, graph: dict[str, set[str]]) -> str:
    """The package folder a module's file lives in."""
    is_package = any(m.startswith(module + ".") for m in graph)
    return module if is_package else module.rpartition(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def violations(graph: dict[str, set[str]], external: dict[str, set[str]]) -> list[str]:
    """Every broken rule, in words."""
    out = []
    for module, edges in sorted(graph.items()):
        for target in sorted(edges):
            top = target.split(".")[0]
            if _is_meter(module) and top in ("sv_jax", "data_pipeline", "configs"):
                out.append(f"meter {module} imports {target}")
            if _in_study_layer(target) and not _in_study_layer(module):
                out.append(f"{module} imports the study layer ({target})")
            if module.split(".")[0] == "cli":
                out.append(f"cli module {module} imports {target}")
            if module.split(".")[0] == "data_pipeline" and top in ("sv_jax", "profiling"):
                out.append(f"data_pipeline module {module} imports {target}")
        if module.split(".")[0] == "data_pipeline":
            out += [f"data_pipeline module {module} imports {name}"
                    for name in sorted(external[module] & set(THIRD_PARTY_FORBIDDEN_IN_DATA))]
    out += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    folders: dict[str, set[str]] = {}
    for module, edges in graph.items():
        for target in edges:
            a, b = _folder(module, graph), _folder(target, graph)
            if a != b:
                folders.setdefault(a, set()).add(b)
    for a in sorted(folders):
        for b in sorted(folders[a]):
            related = a.startswith(b + ".") or b.startswith(a + ".") or not a or not b
            if a < b and a in folders.get(b, ()) and not related:
                out.append(f"package folders {a} and {b} import each other")
    return out


def test_the_project_keeps_every_rule():
    graph, external = import_graph(ROOT)
    assert len(graph) > 60 and graph["sv_jax.train"] and "profiling.energy" in graph["sv_jax.run_profiler"]
    assert violations(graph, external) == []


def test_the_layers_are_what_the_design_says():
    graph, _ = import_graph(ROOT)
    meters = {m for m in graph if _is_meter(m)}
    assert {"profiling.energy", "profiling.sensors", "profiling.carbon", "profiling.peaks", "profiling.xla_cost",
            "profiling.xla_memory", "profiling.macs", "profiling.windows"} <= meters
    # The trainer uses the meters; the study uses the trainer and the meters.
    assert any(_is_meter(t) for t in graph["sv_jax.run_profiler"])
    assert "sv_jax.programs" in graph["profiling.study.measure"] and "profiling.windows" in graph["profiling.study.measure"]
    assert "sv_jax.programs" in graph["profiling.gpu_check.checks"] and not any(
        _is_meter(m) for m in graph if m.startswith("profiling.gpu_check"))


@pytest.mark.parametrize("plant, expected", [
    ({"profiling/energy.py": "from sv_jax import train\n"}, "meter profiling.energy imports sv_jax.train"),
    ({"profiling/carbon.py": "def f():\n    from data_pipeline import audio\n"},
     "meter profiling.carbon imports data_pipeline.audio"),
    ({"sv_jax/train.py": "from profiling.study import report\n"}, "sv_jax.train imports the study layer"),
    ({"profiling/energy.py": "def f():\n    from profiling.gpu_check import checks\n"},
     "profiling.energy imports the study layer (profiling.gpu_check"),
    ({"sv_jax/a.py": "from sv_jax import b\n", "sv_jax/b.py": "from sv_jax import a\n"},
     "import cycle: sv_jax.a -> sv_jax.b"),
    ({"profiling/study/report.py": "from profiling.study import analysis\n",
      "profiling/study/analysis.py": "from profiling.study import report\n"}, "import cycle"),
    ({"data_pipeline/audio.py": "import jax.numpy as jnp\n"}, "data_pipeline module data_pipeline.audio imports jax"),
    ({"sv_jax/models/a.py": "from sv_jax.optim import b\n", "sv_jax/optim/b.py": "from sv_jax.models import c\n"},
     "package folders sv_jax.models and sv_jax.optim import each other"),
])
def test_each_rule_fails_when_broken(tmp_path, plant, expected):
    for package in ("cli", "data_pipeline", "profiling", "profiling/study", "profiling/gpu_check", "sv_jax",
                    "sv_jax/models", "sv_jax/optim"):
        (tmp_path / package).mkdir(parents=True, exist_ok=True)
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "sv_jax/models/c.py").write_text("")
    (tmp_path / "sv_jax/train.py").write_text("from profiling import energy\n")
    (tmp_path / "data_pipeline/audio.py").write_text("import numpy\n")
    (tmp_path / "profiling/energy.py").write_text("import jax\n")
    (tmp_path / "profiling/carbon.py").write_text("")
    for relative, code in plant.items():
        (tmp_path / relative).write_text(code)
    graph, external = import_graph(tmp_path, ("cli", "data_pipeline", "profiling", "sv_jax"))
    found = violations(graph, external)
    assert any(expected in v for v in found), found


def _modules_after_import(*modules: str) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("modules, forbidden", [
    # Models and optimisers work without TensorFlow or the data pipeline.
    (("sv_jax.models", "sv_jax.optim", "sv_jax.step", "sv_jax.programs"), ("tensorflow", "data_pipeline")),
    # A user can meter their own JAX program with the meters alone.
    (("profiling.energy", "profiling.sensors", "profiling.carbon", "profiling.peaks", "profiling.xla_cost",
      "profiling.xla_memory", "profiling.macs", "profiling.windows", "profiling.names"),
     ("sv_jax", "data_pipeline", "tensorflow", "profiling.study")),
    # The study's GPU-side commands measure the trainer's programs without TensorFlow.
    (("profiling.study.benchmark", "profiling.study.measure", "profiling.study.analysis",
      "profiling.study.inference_cost"), ("tensorflow",)),
    # PyTorch (optional) runs only in the benchmark's child process (profiling.study.torch_reference).
    (("profiling.study.benchmark", "profiling.study.torch_comparison"), ("torch",)),
    (("profiling.gpu_check.checks",), ("tensorflow",)),
    # The GPU check's report builder is pure Python: canned results need no jax.
    (("profiling.gpu_check.report",), ("jax", "sv_jax", "numpy")),
])
def test_what_importing_really_loads(modules, forbidden):
    loaded = _modules_after_import(*modules)
    offending = sorted(m for m in loaded if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not offending, f"importing {modules} loads {offending[:5]}"
