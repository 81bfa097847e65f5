"""The benchmark's PyTorch reference (profiling/study/torch_reference.py): the same model as sv_jax's (parameter
counts, embeddings, logits and SGD steps from copied weights), its child process, and `--torch_reference` with and
without torch installed. The tests that need torch skip without it; those of a missing torch hide it."""

import functools
import importlib
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cli
from configs import tiny
from profiling.study import benchmark, torch_comparison
from sv_jax import commands, models, optim, tasks
from sv_jax import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# tests/test_models.py (docs/design.md): feat 80, emb 256, TSTP, no head; the r34 figure is WeSpeaker's ResNet34.
WESPEAKER_PARAMS = {"r18": 4_105_440, "r34": 6_634_336, "r50": 11_131_360}
NUM_CLASSES, BATCH = 6, 4


@pytest.fixture(name="ref")
def _ref():
    pytest.importorskip("torch")
    from profiling.study import torch_reference
    return torch_reference


def _spec(ref, config, batch_size=BATCH, num_classes=NUM_CLASSES, **overrides):
    fields = torch_comparison.reference_spec(config, batch_size, num_classes, jax.devices())
    return ref.ReferenceSpec(**(fields | overrides))


@pytest.mark.parametrize("name", sorted(WESPEAKER_PARAMS))
def test_parameter_counts_equal_the_flax_models(ref, name):
    config = importlib.import_module(f"configs.{name}").get_config()
    net = ref.create_model(_spec(ref, config, num_classes=1000))
    assert ref.count_params(net) == commands.describe(config)["params"] == WESPEAKER_PARAMS[name]
    assert sum(p.numel() for p in net.head.parameters()) == 1000 * 256


def test_tiny_forward_shape_and_spec_from_the_config(ref):
    import torch
    spec = _spec(ref, tiny.get_config(), batch_size=3)
    assert (spec.block, tuple(spec.num_blocks), spec.width, spec.embed_dim) == ("basic", (1, 1, 1, 1), 4, 16)
    assert (spec.num_frames, spec.num_mel_bins, spec.optimizer) == (50, 24, "adamw")
    feats, labels = ref.random_batch(spec)
    assert feats.shape == (3, 50, 24) and labels.shape == (3,)
    net = ref.create_model(spec).eval()
    with torch.inference_mode():
        assert net.embed(feats).shape == (3, 16)


def test_unsupported_configs_are_refused_in_one_line():
    config = tiny.get_config()
    config.optim.state_bits = 8
    with pytest.raises(cli.ConfigError, match="cannot compare optim.state_bits 8"):
        torch_comparison.reference_spec(config, BATCH, NUM_CLASSES, jax.devices())


def _perturbed(tree, rng):
    """Every variable scaled and shifted at random, BN statistics too (variances stay positive)."""
    return jax.tree.map(lambda x: np.asarray(x) * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
                        + 0.05 * rng.standard_normal(x.shape).astype(np.float32), tree)


@functools.lru_cache(maxsize=1)
def _flax_reference():
    """configs/tiny.py with the recipe's SGD: perturbed Flax variables, a batch, the embedding and logits in eval
    mode, and the parameters after two SGD steps of sv_jax's own train step."""
    config = tiny.get_config()
    config.optim.name = "sgd"
    model = models.create_model(config.model, NUM_CLASSES)
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((BATCH, config.data.num_frames, config.data.num_mel_bins), np.float32)
    labels = rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32)
    variables = _perturbed(jax.jit(lambda: model.init(jax.random.key(0), feats, labels, 0.0, train=False))(),
                           rng)
    embeddings, logits = jax.jit(lambda v: model.apply(v, feats, labels, 0.2, train=False))(variables)
    tx = optim.create_optimizer(config.optim, 0.5)
    state = step_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                batch_stats=variables["batch_stats"], opt_state=tx.init(variables["params"]))
    step = jax.jit(functools.partial(step_lib.train_step, loss_fn=tasks.speaker_loss(model, lambda s: 0.2), tx=tx,
                                     learning_rate_fn=lambda s: 0.5))
    losses = []
    for _ in range(2):
        state, metrics = step(state, {"feats": feats, "label": labels})
        losses.append(float(metrics["loss"]))
    return config, variables, feats, labels, np.asarray(embeddings), np.asarray(logits), state.params, losses


def test_flax_weights_give_the_flax_embeddings_and_logits(ref):
    import torch
    config, variables, feats, labels, embeddings, logits, _, _ = _flax_reference()
    net = ref.create_model(_spec(ref, config)).eval()
    ref.copy_flax_variables(net, variables)
    with torch.inference_mode():
        torch_embeddings, torch_logits = net(torch.from_numpy(feats), torch.from_numpy(labels).long(), 0.2)
    np.testing.assert_allclose(torch_embeddings.numpy(), embeddings, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(torch_logits.numpy(), logits, rtol=1e-4, atol=1e-3)  # scale 32


def test_torch_train_steps_match_sv_jax_steps(ref):
    """Two steps of SGD (Nesterov, momentum 0.9, coupled weight decay 1e-4) in train mode: the same losses and
    parameters. BN running variances are not compared: torch updates them with the unbiased batch variance."""
    import torch
    config, variables, feats, labels, _, _, params_after, losses = _flax_reference()
    spec = _spec(ref, config, learning_rate=0.5, margin=0.2)
    net = ref.create_model(spec)
    ref.copy_flax_variables(net, variables)
    optimizer = ref.create_optimizer(spec, net.parameters())
    net.train()
    torch_losses = [float(ref.train_step(net, optimizer, torch.from_numpy(feats), torch.from_numpy(labels).long(),
                                         spec.margin)) for _ in range(2)]
    np.testing.assert_allclose(torch_losses, losses, rtol=1e-4)
    expected = ref.create_model(spec)
    ref.copy_flax_variables(expected, {"params": params_after, "batch_stats": variables["batch_stats"]})
    want = dict(expected.named_parameters())
    for name, value in net.named_parameters():
        np.testing.assert_allclose(value.detach().numpy(), want[name].detach().numpy(), rtol=1e-3, atol=1e-4,
                                   err_msg=name)


def test_the_child_process_loads_no_jax(ref):
    code = ("import json, sys\nimport profiling.study.torch_reference\n"
            "print(json.dumps(sorted(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert not [m for m in loaded if m.split(".")[0] in ("jax", "jaxlib", "tensorflow")]
    assert [m for m in loaded if m.split(".")[0] == "sv_jax"] == ["sv_jax", "sv_jax.wespeaker"]  # numpy only


def test_benchmark_with_torch_reference_reports_both_sides_and_ratios(ref):
    result = subprocess.run(
        [sys.executable, "-m", "profiling.study.benchmark", "--config=configs/tiny.py", f"--batch_size={2 * BATCH}",
         "--steps=2", "--blocks=2", "--warmup=1", f"--num_classes={NUM_CLASSES}", "--json", "--torch_reference"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=600,
        env={k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"})
    report = json.loads(result.stdout[result.stdout.index("{"):])["torch_reference"]
    cores = torch_comparison.jax_cores()[0]
    # Idle OpenMP threads sleep on both sides, so neither side's block runs beside the other's spinning threads.
    assert report["openmp"] == "OMP_WAIT_POLICY=PASSIVE (both processes)" and report["torch_omp_wait_policy"] == "PASSIVE"
    assert report["threads"] == report["jax_cores"] == cores and report["params"] == 22_588
    assert report["optimizer"].startswith("AdamW(") and (report["pairs"], report["calls_per_block"]) == (2, 2)
    for side in ("sv_jax", "torch"):
        assert len(report[side]["train_step_s_blocks"]) == len(report[side]["forward_utt_per_s_blocks"]) == 2
        assert report[side]["train_step_s"] > 0 and report[side]["forward_utt_per_s"] > 0
    for key in ("train_step_s", "forward_utt_per_s"):
        assert math.isfinite(report[f"{key}_ratio"]) and report[f"{key}_ratio"] > 0
        assert report[f"{key}_ratio"] == pytest.approx(report["sv_jax"][key] / report["torch"][key])
        assert len(report[f"{key}_pair_ratios"]) == 2
    assert f"{cores} threads" in result.stderr and "sv_jax/torch" in result.stderr  # the table, next to the JSON


def test_without_torch_the_flag_is_a_one_line_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails, as without the package
    with pytest.raises(cli.UserError, match=r"needs PyTorch \(package 'torch'\).*pip install torch --index-url "
                                            r"https://download.pytorch.org/whl/cpu"):
        benchmark.run(tiny.get_config(), batch_size=BATCH, torch_reference=True)  # before anything is compiled


def test_without_torch_the_command_exits_2_with_one_line():
    hide_torch = ("import runpy, sys\nsys.modules['torch'] = None\n"
                  "sys.argv = ['benchmark', '--config=configs/tiny.py', '--batch_size=8', '--torch_reference']\n"
                  "runpy.run_module('profiling.study.benchmark', run_name='__main__', alter_sys=True)")
    result = subprocess.run([sys.executable, "-c", hide_torch], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"error: --torch_reference needs PyTorch (package 'torch'), which is not installed: "
                      f"{torch_comparison.INSTALL} (or pip install -r requirements-bench.txt)"]
    assert "Traceback" not in result.stderr and result.stdout == ""
