"""WeSpeaker checkpoints (sv_jax/wespeaker.py, `--mode=import`): the key mapping both ways, its errors, and the
embeddings of an imported model against PyTorch's on the same Kaldi fbank features. The tests that read or write
`.pt` files or run PyTorch skip without torch (an optional dependency)."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile

from configs import r34, tiny
from profiling.study import torch_comparison
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import commands, data_sources, models, train, wespeaker
from test_features import kaldi_fbank, speech_like

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tiny(name="ResNet", **model):
    config = tiny.get_config()
    config.model.name = name
    if name == "DFResNet":
        config.model.block, config.model.num_blocks = None, (1, 1, 2, 1)
    elif name == "ResNet":
        config.model.block = model.pop("block", "basic")
    config.model.update(model)
    return config


def _variables(config, num_classes=5, seed=0):
    """Random Flax variables of the config's model (BN statistics too), as numpy."""
    model = models.create_model(config.model, num_classes)
    feats = np.zeros((2, config.data.num_frames, config.data.num_mel_bins), np.float32)
    init = jax.jit(lambda: model.init(jax.random.key(seed), feats, np.zeros((2,), np.int32), 0.0, train=False))()
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) * rng.uniform(0.5, 1.5, x.shape).astype(np.float32)
                        + 0.05 * np.abs(rng.standard_normal(x.shape)).astype(np.float32), init)


def _abstract(variables):
    return {c: {"backbone": variables[c]["backbone"]} for c in ("params", "batch_stats")}


CASES = {"basic": dict(block="basic"), "bottleneck": dict(block="bottleneck"), "dfresnet": {}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_then_import_gives_back_every_variable(case):
    config = _tiny("DFResNet" if case == "dfresnet" else "ResNet", **CASES[case])
    variables = _variables(config)
    state = wespeaker.export_state_dict(variables)
    if case == "dfresnet":
        assert {"downsample_layers.0.0.weight", "downsample_layers.4.1.running_var", "stages.2.1.conv2.weight",
                "stages.3.0.bn3.num_batches_tracked", "seg_1.weight", "projection.weight"} <= set(state)
        assert state["stages.0.0.conv2.weight"].shape == (16, 1, 3, 3)  # depthwise, OIHW
    else:
        assert {"conv1.weight", "bn1.running_mean", "layer1.0.conv2.weight", "layer2.0.shortcut.0.weight",
                "layer2.0.shortcut.1.bias", "layer4.0.bn1.num_batches_tracked", "seg_1.bias"} <= set(state)
        assert state["conv1.weight"].shape == (4, 1, 3, 3)
    assert state["projection.weight"].shape == (5, 16) and state["seg_1.weight"].shape[0] == 16
    back, notes = wespeaker.import_state_dict(state, _abstract(variables))
    assert notes == []
    flat = dict(wespeaker.flatten(variables))
    assert dict(wespeaker.flatten(back)).keys() == flat.keys()
    for path, value in wespeaker.flatten(back):
        np.testing.assert_array_equal(value, flat[path], err_msg="/".join(path))


def test_every_missing_unexpected_and_misshaped_key_is_named_in_one_error():
    config = _tiny()
    variables = _variables(config)
    state = wespeaker.export_state_dict(variables)
    del state["layer3.0.bn2.running_var"]
    state["seg_bn_1.running_mean"] = np.zeros(16, np.float32)  # two_emb_layer=True: not sv_jax's model
    state["layer1.0.conv1.weight"] = np.zeros((4, 4, 1, 3), np.float32)
    state["projection.weight"] = np.zeros((5, 32), np.float32)
    with pytest.raises(wespeaker.MappingError) as error:
        wespeaker.import_state_dict(state, _abstract(variables), source="avg_model.pt", hint="check model.width")
    message = str(error.value)
    assert "\n" not in message and message.startswith("avg_model.pt does not fit the model")
    for expected in ("missing 1: layer3.0.bn2.running_var", "unexpected 1: seg_bn_1.running_mean",
                     "layer1.0.conv1.weight (4, 4, 1, 3) (model: (4, 4, 3, 3))",
                     "projection.weight (5, 32) (model: (classes, 16))", "check model.width"):
        assert expected in message


def test_wrappers_prefixes_and_other_heads_are_handled():
    config = _tiny()
    variables = _variables(config)
    state = wespeaker.export_state_dict(variables)
    del state["projection.weight"]
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    unwrapped = wespeaker.unwrap(wrapped)
    assert unwrapped.keys() == state.keys()
    unwrapped["projection.fc.weight"] = np.zeros((3, 16), np.float32)
    back, notes = wespeaker.import_state_dict(unwrapped, _abstract(variables))
    assert "head" not in back["params"]
    assert any("projection.fc.weight" in n for n in notes) and any("without a head" in n for n in notes)


def test_a_reversible_model_has_no_wespeaker_names():
    variables = _variables(_tiny(reversible="partial", num_blocks=(2, 2, 2, 2)))
    with pytest.raises(wespeaker.MappingError, match="model.reversible='none'"):
        wespeaker.export_state_dict(variables)


# With torch: the reference's modules carry WeSpeaker's names, so its state dict is a WeSpeaker checkpoint.

@pytest.fixture(name="torch_ref")
def _torch_ref():
    pytest.importorskip("torch")
    from profiling.study import torch_reference
    return torch_reference


def _torch_net(torch_ref, config, num_classes, seed=0):
    """The PyTorch reference of the config's model with random weights and BN statistics, in eval mode."""
    import torch
    torch.manual_seed(seed)
    fields = torch_comparison.reference_spec(config, 2, num_classes, jax.devices())
    net = torch_ref.create_model(torch_ref.ReferenceSpec(**fields)).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return net


def _save_wespeaker_checkpoint(net, path):
    """What WeSpeaker's save_checkpoint writes: the model's state dict with the margin head as `projection`."""
    import torch
    state = dict(net.backbone.state_dict())
    state["projection.weight"] = net.head.weight.detach().clone()
    torch.save(state, path)
    return state


@pytest.mark.parametrize("name", ["ResNet34", "ResNet50", "DFResNet114"])
def test_the_reference_state_dict_has_the_keys_and_shapes_sv_jax_maps(torch_ref, name):
    config = r34.get_config()
    config.model.name = name
    state = {k: v.shape for k, v in _torch_net(torch_ref, config, 11).backbone.state_dict().items()}
    backbone = models.create_model(config.model, 11).backbone
    shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), np.zeros((1, 200, 80), np.float32)))
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, np.float32), _abstract(
        {c: {"backbone": shapes[c]} for c in ("params", "batch_stats")}))
    exported = wespeaker.export_state_dict(zeros)
    assert {k: tuple(v.shape) for k, v in exported.items()} == {k: tuple(v) for k, v in state.items()}


def _wavs(directory, seconds=(2.3, 3.7)):
    paths = []
    for index, length in enumerate(seconds):
        path = pathlib.Path(directory) / f"utt{index}.wav"
        soundfile.write(path, speech_like(16000, length, seed=index), 16000, subtype="FLOAT")
        paths.append(path)
    return paths


def _torch_embeddings(net, paths, num_mel_bins):
    """WeSpeaker's extraction: Kaldi fbank (dither 0) of the whole utterance, mean over frames subtracted (CMN),
    the model's embedding."""
    import torch
    out = []
    for path in paths:
        waveform, _ = soundfile.read(path, dtype="float32")
        feats = kaldi_fbank(waveform, 16000, num_mel_bins=num_mel_bins)
        feats = feats - feats.mean(axis=0, keepdims=True)
        with torch.inference_mode():
            out.append(net.embed(torch.from_numpy(feats[None].astype(np.float32)))[0].numpy())
    return np.stack(out)


def _cosine(a, b):
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("name", ["ResNet34", "tiny-DFResNet"])
def test_import_then_extract_gives_pytorchs_embeddings(torch_ref, tmp_path, name):
    """The acceptance check: a WeSpeaker-format checkpoint imported and extracted on whole utterances gives the
    embeddings PyTorch computes with the same weights on Kaldi fbank features (cosine >= 0.9999)."""
    if name == "ResNet34":
        config = r34.get_config()  # 80 mel bins, the published model's shape
    else:
        config = _tiny("DFResNet")
    net = _torch_net(torch_ref, config, num_classes=7)
    _save_wespeaker_checkpoint(net, tmp_path / "avg_model.pt")
    workdir = tmp_path / "run"
    report = commands.run("import", config, str(workdir), torch_checkpoint=str(tmp_path / "avg_model.pt"))
    assert report["head_classes"] == 7 and report["params"] == torch_ref.count_params(net)
    assert json.loads((workdir / "import.json").read_text())["params"] == report["params"]
    paths = _wavs(tmp_path)
    (tmp_path / "list.txt").write_text("\n".join(map(str, paths)))
    extracted = commands.run("extract", config, str(workdir), audio_list=str(tmp_path / "list.txt"),
                             output=str(tmp_path / "emb.npy"))
    assert extracted["checkpoint"].startswith("imported from")
    ours = np.load(tmp_path / "emb.npy")
    theirs = _torch_embeddings(net, paths, config.data.num_mel_bins)
    cosine = _cosine(ours, theirs)
    print(f"{name}: cosine {cosine}")
    assert cosine.min() >= 0.9999
    # The cosine is not trivially 1: another network's weights give other embeddings.
    other = _torch_embeddings(_torch_net(torch_ref, config, num_classes=7, seed=1), paths, config.data.num_mel_bins)
    assert _cosine(ours, other).max() < 0.99


def test_import_refuses_a_used_workdir_and_bad_files_in_one_line(torch_ref, tmp_path):
    config = _tiny()
    net = _torch_net(torch_ref, config, num_classes=3)
    _save_wespeaker_checkpoint(net, tmp_path / "ok.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a zip")
    base = [sys.executable, "-m", "sv_jax.main", "--config=configs/tiny.py", "--mode=import"]
    for args, expected in (([f"--workdir={tmp_path}/w1", f"--torch_checkpoint={tmp_path}/bad.pt"],
                            "bad.pt: not a PyTorch checkpoint"),
                           ([f"--workdir={tmp_path}/w2", f"--torch_checkpoint={tmp_path}/none.pt"],
                            "none.pt: no such checkpoint file"),
                           ([f"--workdir={tmp_path}/w3", f"--torch_checkpoint={tmp_path}/ok.pt",
                             "--config.model.width=8"], "mis-shaped")):
        result = subprocess.run(base + args, cwd=REPO, capture_output=True, text=True)
        assert result.returncode == 2, result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], result.stderr
        assert "Traceback" not in result.stderr
    commands.run("import", config, str(tmp_path / "w4"), torch_checkpoint=str(tmp_path / "ok.pt"))
    with pytest.raises(commands.ConfigError, match="already holds checkpoints"):
        commands.run("import", config, str(tmp_path / "w4"), torch_checkpoint=str(tmp_path / "ok.pt"))


def test_without_torch_the_import_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    (tmp_path / "x.pt").write_bytes(b"")
    with pytest.raises(commands.UserError, match="needs torch, an optional dependency: pip install"):
        commands.run("import", _tiny(), str(tmp_path / "w"), torch_checkpoint=str(tmp_path / "x.pt"))


def test_training_fine_tunes_an_imported_model(torch_ref, corpus_root, tmp_path):
    """`--mode=train` on an imported workdir starts from the imported weights (head kept: its class count is the
    data's), at step 0 with a fresh optimizer, and then checkpoints as usual."""
    config = _tiny()
    config.data.synthetic.root = str(corpus_root)
    config.train.num_epochs = 1
    num_classes = data_sources.resolve_data(config.data, str(tmp_path)).num_classes
    net = _torch_net(torch_ref, config, num_classes=num_classes)
    state = _save_wespeaker_checkpoint(net, tmp_path / "avg_model.pt")
    workdir = tmp_path / "run"
    commands.run("import", config, str(workdir), torch_checkpoint=str(tmp_path / "avg_model.pt"))
    imported = checkpoint_lib.Checkpointer(workdir).restore_raw(0)
    config.optim.initial_lr = config.optim.final_lr = 1e-30  # no visible update: the state stays the imported one
    summary = train.train_and_evaluate(config, str(workdir))
    assert summary["resumed_from_step"] == 0 and summary["steps"] == 3
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    after = checkpointer.restore_raw(checkpointer.latest_step())
    np.testing.assert_allclose(after["params"]["head"]["weight"], state["projection.weight"].numpy().T)
    np.testing.assert_allclose(after["params"]["backbone"]["seg_1"]["kernel"],
                               imported["params"]["backbone"]["seg_1"]["kernel"])
