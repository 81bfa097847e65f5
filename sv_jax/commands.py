"""The modes of `python -m sv_jax.main`: train, eval, extract and describe."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cli import ConfigError, MissingInputError
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import evaluation
from sv_jax import data_sources
from sv_jax import models
from sv_jax import parallel


def run(mode: str, config, workdir: str, *, audio_list: str | None = None, output: str | None = None) -> dict:
    if mode == "train":
        from sv_jax import train  # pylint: disable=import-outside-toplevel
        return train.train_and_evaluate(config, workdir)
    if mode == "eval":
        return evaluate_latest(config, workdir)
    if mode == "extract":
        return extract(config, workdir, audio_list, output)
    if mode == "describe":
        description = describe(config)
        print(json.dumps(description, indent=2))
        return description
    raise ConfigError(f"unknown mode {mode!r}; choose one of ['train', 'eval', 'extract', 'describe']")


def describe(config) -> dict:
    """Parameter count and output shape of every top-level layer of the embedding extractor (no data needed)."""
    block, num_blocks = models.resolve_architecture(config.model)
    time_strides = models.resolve_time_strides(config.model)
    backbone = models.create_model(config.model, num_classes=1).backbone
    feats = jnp.zeros((1, config.data.num_frames, config.data.num_mel_bins), jnp.float32)
    variables = jax.eval_shape(lambda: backbone.init(jax.random.key(0), feats))
    _, state = jax.eval_shape(lambda v: backbone.apply(
        v, feats, capture_intermediates=lambda mdl, method: method == "__call__" and len(mdl.path) == 1,
        mutable=["intermediates"]), variables)
    layers = [{"name": name, "output_shape": list(value["__call__"][0].shape)}
              for name, value in state["intermediates"].items() if name != "__call__"]
    layers.sort(key=lambda layer: _execution_order(layer["name"]))
    per_layer = {name: models.count_params(tree) for name, tree in variables["params"].items()}
    architecture = {"block": block, "num_blocks": list(num_blocks)}
    if time_strides is not None:
        architecture["time_strides"] = list(time_strides)
        if time_strides != models.GEMINI_TIME_STRIDES:
            architecture["note"] = (f"time strides {list(time_strides)}, not WeSpeaker's T14c "
                                    f"{list(models.GEMINI_TIME_STRIDES)}: not one of WeSpeaker's models")
    return {
        "model": config.model.name, **architecture, "width": config.model.width,
        "embed_dim": config.model.embed_dim, "dtype": config.model.dtype, "reversible": config.model.reversible,
        "params": models.count_params(variables["params"]),
        "input_shape": list(feats.shape), "layout": "stage outputs are NHWC = (batch, freq, time, channels)",
        "layers": [dict(layer, params=per_layer.get(layer["name"], 0)) for layer in layers],
    }


def _execution_order(name: str) -> tuple:
    """stem, then per stage its downsampling layer (DF-ResNets) and its blocks, then the rest (out_conv, seg_1)."""
    if name == "stem":
        return (0,)
    if name.startswith("downsample"):
        return (1, int(name[len("downsample"):]), -1)
    if name.startswith("layer"):
        stage, index = name[len("layer"):].split("_")
        return (1, int(stage), int(index))
    return (2, name != "out_conv", name)


def _restore_variables(config, workdir: str):
    """Backbone + head variables of the latest checkpoint, replicated over all devices."""
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    step = checkpointer.latest_step()
    if step is None:
        raise MissingInputError(f"no checkpoint in {checkpointer.directory}: train first (--mode=train)")
    state = checkpointer.restore_raw(step)
    mesh = parallel.create_mesh()
    variables = jax.device_put({"params": state["params"], "batch_stats": state["batch_stats"]},
                               parallel.replicated(mesh))
    num_classes = int(np.shape(state["params"]["head"]["weight"])[-1])
    model = models.create_model(config.model, num_classes)
    return model, variables, mesh, step


def evaluate_latest(config, workdir: str) -> dict:
    model, variables, mesh, step = _restore_variables(config, workdir)
    data = data_sources.resolve_data(config.data, workdir, need_train=config.eval.subtract_mean or config.eval.as_norm)
    results = evaluation.evaluate(evaluation.Embedder(model, mesh), variables, config, data)
    report = {"step": step, "eval": results}
    (pathlib.Path(workdir) / "eval.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


def extract(config, workdir: str, audio_list: str | None, output: str | None) -> dict:
    if not audio_list or not output:
        raise ConfigError("--mode=extract needs --audio_list (one audio path per line) and --output (.npy)")
    paths = [line.strip() for line in pathlib.Path(audio_list).read_text().splitlines() if line.strip()]
    if not paths:
        raise ConfigError(f"{audio_list}: no audio paths listed")
    missing = [p for p in paths if not pathlib.Path(p).is_file()]
    if missing:
        raise MissingInputError(f"{audio_list}: {len(missing)} listed files do not exist, e.g. {missing[:10]}")
    model, variables, mesh, step = _restore_variables(config, workdir)
    embeddings = evaluation.embed_files(evaluation.Embedder(model, mesh), variables, config, paths)
    np.save(output, embeddings)
    report = {"step": step, "utterances": len(paths), "embed_dim": int(embeddings.shape[1]), "output": output}
    print(json.dumps(report))
    return report
