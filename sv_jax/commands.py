"""The modes of `python -m sv_jax.main`: train, eval, extract, describe, import and average."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from cli import ConfigError, MissingInputError, UserError
from sv_jax import averaging
from sv_jax import checkpoint as checkpoint_lib
from sv_jax import evaluation
from sv_jax import data_sources
from sv_jax import models
from sv_jax import parallel


MODES = ("train", "eval", "extract", "describe", "import", "average")


def run(mode: str, config, workdir: str, *, audio_list: str | None = None, output: str | None = None,
        torch_checkpoint: str | None = None, average_last: int | None = None) -> dict:
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
    if mode == "import":
        return import_wespeaker(config, workdir, torch_checkpoint)
    if mode == "average":
        return average(config, workdir, config.train.average_last if average_last is None else average_last)
    raise ConfigError(f"unknown mode {mode!r}; choose one of {list(MODES)}")


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


def restore_for_inference(config, workdir: str):
    """The model and the variables inference uses (sv_jax.averaging.inference_state: the average of the last
    checkpoints, or the latest one), replicated over all devices: (model, variables, mesh, {'step', 'checkpoint'})."""
    state, source = averaging.inference_state(workdir)
    mesh = parallel.create_mesh()
    variables = jax.device_put({"params": state["params"], "batch_stats": state["batch_stats"]},
                               parallel.replicated(mesh))
    head = state["params"].get("head")
    num_classes = int(np.shape(head["weight"])[-1]) if head else 1  # imported without a head: embed never uses it
    model = models.create_model(config.model, num_classes)
    return model, variables, mesh, source


def evaluate_latest(config, workdir: str) -> dict:
    model, variables, mesh, source = restore_for_inference(config, workdir)
    data = data_sources.resolve_data(config.data, workdir, need_train=config.eval.subtract_mean or config.eval.as_norm)
    results = evaluation.evaluate(evaluation.Embedder(model, mesh), variables, config, data)
    report = {**source, "eval": results}
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
    model, variables, mesh, source = restore_for_inference(config, workdir)
    embeddings = evaluation.embed_files(evaluation.Embedder(model, mesh), variables, config, paths)
    np.save(output, embeddings)
    report = {**source, "utterances": len(paths), "embed_dim": int(embeddings.shape[1]), "output": output}
    print(json.dumps(report))
    return report


def import_wespeaker(config, workdir: str, torch_checkpoint: str | None) -> dict:
    """A WeSpeaker state dict (`avg_model.pt`) -> an orbax checkpoint (step 0) in `workdir` that eval, extract and
    training (fine-tuning) start from; sv_jax/wespeaker.py documents the mapping."""
    from sv_jax import wespeaker  # pylint: disable=import-outside-toplevel
    if not torch_checkpoint:
        raise ConfigError("--mode=import needs --torch_checkpoint=<a WeSpeaker state dict, e.g. avg_model.pt>")
    if config.model.reversible != "none":
        raise ConfigError(f"model.reversible={config.model.reversible!r}: WeSpeaker's models are plain; import with "
                          "--config.model.reversible=none")
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    try:
        existing = checkpointer.latest_step()
        if existing is not None:
            raise ConfigError(f"{checkpointer.directory} already holds checkpoints (latest step {existing}): import "
                              "into a new --workdir (nothing there is overwritten)")
        try:
            state = wespeaker.read_torch_checkpoint(torch_checkpoint)
        except FileNotFoundError as error:
            raise MissingInputError(str(error)) from error
        except (ImportError, ValueError) as error:
            raise UserError(str(error)) from error
        backbone = models.create_model(config.model, num_classes=1).backbone
        feats = jnp.zeros((1, config.data.num_frames, config.data.num_mel_bins), jnp.float32)
        shapes = jax.eval_shape(lambda: backbone.init(jax.random.key(0), feats))
        abstract = {collection: {"backbone": shapes[collection]} for collection in ("params", "batch_stats")}
        try:
            variables, notes = wespeaker.import_state_dict(
                state, abstract, source=torch_checkpoint,
                hint=f"the model is {config.model.name} (width {config.model.width}, embed_dim "
                     f"{config.model.embed_dim}, {config.data.num_mel_bins} mel bins): is that the checkpoint's "
                     "config? (--config.model.*, --config.data.num_mel_bins)")
        except wespeaker.MappingError as error:
            raise UserError(str(error)) from error
        head = variables["params"].get("head")
        classes = int(head["weight"].shape[-1]) if head else None
        if classes:
            notes.append(f"{wespeaker.HEAD_KEY}: {classes} classes, kept (training on data with another class "
                         "count starts a new head)")
        checkpointer.save(0, variables, {"imported_from": str(pathlib.Path(torch_checkpoint).absolute()),
                                         "format": "wespeaker", "head_classes": classes, "step": 0,
                                         "next_position": 0, "next_positions": [0]})
    finally:
        checkpointer.close()
    report = {"imported_from": torch_checkpoint, "model": config.model.name,
              "params": models.count_params(variables["params"]["backbone"]), "head_classes": classes,
              "tensors": len(state), "checkpoint": str(checkpointer.directory / "0"), "notes": notes}
    pathlib.Path(workdir, "import.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


def average(config, workdir: str, average_last: int) -> dict:
    """Averages the last `average_last` checkpoints of `workdir` (sv_jax.averaging), keeps the average, evaluates it
    when the config names trials (data.trials, or the synthetic corpus)."""
    if average_last < 1:
        raise ConfigError(f"--average_last={average_last}: average at least 1 checkpoint (WeSpeaker averages 10)")
    _, steps = averaging.average_last(workdir, average_last)
    report = {"averaged_steps": steps}
    if config.data.source == "synthetic" or config.data.trials:
        report.update(evaluate_latest(config, workdir))
    else:
        print(json.dumps(report))
    return report
