"""What the trainer trains: a task names its model, loss, batches, data, evaluation and summary; the loop is shared.

    task = tasks.get(config)                  # config.task: 'speaker' (the default) | 'tagging'
    model = task.create_model(config.model, num_classes)
    loss_fn = task.loss_fn(model, margin_fn=..., seed=config.seed)     # for sv_jax.step.train_step

Two tasks share sv_jax.step (one optimisation step), sv_jax.programs (the compiled train step and forward, their
FLOPs), sv_jax.train (the loop: checkpoints, preemption, profiling) and the study's sweeps:

- 'speaker' (`SpeakerTask`): WeSpeaker's speaker verification. ResNets / DF-ResNets with an ArcMargin head on
  [B, frames, 80] fbank chunks, labels `label` int32 [B]; the forward is the embedding; evaluated by EER / minDCF on
  trial lists (sv_jax.evaluation).
- 'tagging' (sv_jax.tagging_task.TaggingTask): audio tagging on 10-s clips (DESED's classes), MLP / CNN / RNN / CRNN
  on [B, frames, 128] log-mel, weak labels `labels` float32 [B, classes], multi-label binary cross-entropy; the
  forward is the clip logits; evaluated by mAP and macro F1 on held-out clips (sv_jax.tagging.metrics).

A task is a plain object; its data methods import their pipelines (and TensorFlow) on first use, so counting FLOPs
and benchmarks need none.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cli import ConfigError
from sv_jax import models

NAMES = ("speaker", "tagging")


def speaker_loss(model, margin_fn: Callable) -> Callable:
    """The speaker task's loss for sv_jax.step.train_step: softmax cross-entropy of the ArcMargin logits, the
    margin at the state's step from `margin_fn`; metrics accuracy (top-1 over training speakers) and margin."""
    def loss_fn(params, batch_stats, batch, step):
        margin = margin_fn(step)
        (_, logits), updates = model.apply({"params": params, "batch_stats": batch_stats}, batch["feats"],
                                           batch["label"], margin, train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        metrics = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]), "margin": margin}
        return loss, (metrics, updates["batch_stats"])
    return loss_fn


class SpeakerTask:
    """Speaker verification: the speaker half of sv_jax (module docstring)."""

    name = "speaker"
    uses_margin = True  # the ArcMargin schedule (config.loss)
    item = "utterance"  # what one row of a batch is, in logs and summaries
    # The train step's analytic floor in forward passes' worth of products: the forward and the gradients with
    # respect to the activations and to the weights (the first convolution's input gradient is a sliver of a ResNet).
    train_step_passes = 3

    # --- model side: what sv_jax.step and sv_jax.programs need -------------------------------------------------

    def create_model(self, model_config, num_classes: int, *, for_counting: bool = False):
        return models.create_model(model_config, num_classes, for_counting=for_counting)

    def init_variables(self, model, rng, feats) -> dict:
        return model.init(rng, feats, jnp.zeros((feats.shape[0],), jnp.int32), 0.0, train=False)

    def loss_fn(self, model, *, margin_fn: Callable, seed: int) -> Callable:
        del seed  # no randomness in the speaker models' training forward
        return speaker_loss(model, margin_fn)

    def feat_shape(self, data_config) -> tuple[int, int]:
        return data_config.num_frames, data_config.num_mel_bins

    def label_batch(self, batch_size: int, num_classes: int) -> dict[str, Any]:
        """The batch's label entries, abstract (for lowering)."""
        return {"label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}

    def random_labels(self, rng: np.random.Generator, batch_size: int, num_classes: int) -> dict[str, np.ndarray]:
        return {"label": rng.integers(0, num_classes, batch_size).astype(np.int32)}

    def forward(self, model) -> Callable:
        """(variables, feats) -> what inference computes: the embeddings."""
        return lambda variables, feats: model.apply(variables, feats, method=model.embed)

    def forward_macs(self, config, num_classes: int) -> int:
        from sv_jax.models import macs  # pylint: disable=import-outside-toplevel
        return macs.forward_macs(config.model, config.data.num_frames, config.data.num_mel_bins)

    def counting_fallback(self, model_config) -> str:
        """Why the programs are counted on a copy lowered for counting ('' when they are not): see
        sv_jax.programs."""
        return models.counting_fallback(model_config)

    def train_step_counted_unoptimized(self, model_config) -> str:
        """Why the train step's FLOPs are counted before optimisation ('': they are not)."""
        return ""

    def param_counts(self, params) -> dict[str, int]:
        """What WeSpeaker counts as the model (the backbone), and the training head apart."""
        return {"params": models.count_params(params["backbone"]), "head_params": models.count_params(params["head"])}

    def default_num_classes(self, config) -> int:
        """Classes of the ArcMargin head: VoxCeleb2 dev's 5,994 speakers (or the synthetic corpus's training
        speakers), times 3 with speed perturbation."""
        from data_pipeline import manifest  # pylint: disable=import-outside-toplevel  # not needed to count FLOPs
        speakers = (config.data.synthetic.num_train_speakers if config.data.source == "synthetic"
                    else manifest.VOXCELEB2_DEV_SPEAKERS)
        return speakers * (3 if config.data.speed_perturb else 1)

    # --- data side: what sv_jax.train needs ------------------------------------------------------------------

    def resolve_data(self, data_config, workdir):
        from sv_jax import data_sources  # pylint: disable=import-outside-toplevel
        return data_sources.resolve_data(data_config, workdir)

    def num_train_items(self, data) -> int:
        return len(data.train)

    def new_bad_audio_log(self):
        from sv_jax import data_sources  # pylint: disable=import-outside-toplevel
        return data_sources.new_bad_audio_log()

    def train_batches(self, config, data, **kwargs):
        from sv_jax import data_sources  # pylint: disable=import-outside-toplevel
        return data_sources.train_batches(config.data, data, **kwargs)

    def evaluator(self, config, data, model, mesh) -> "SpeakerEvaluator":
        return SpeakerEvaluator(config, data, model, mesh)

    def data_summary(self, data, bad_audio_log) -> dict[str, Any]:
        return {"train_utterances": len(data.train), "speakers": data.train.num_speakers,
                "classes": data.num_classes,
                "source": str(data.train_shards.root if data.train_shards else data.train.root),
                "bad_audio_skipped": bad_audio_log.count, "bad_audio_files": bad_audio_log.files[:100]}

    def eval_scalars(self, results: dict) -> dict[str, float]:
        from sv_jax import reporting  # pylint: disable=import-outside-toplevel
        return reporting.eval_scalars(results)


class SpeakerEvaluator:
    """EER / minDCF per trial list (sv_jax.evaluation.evaluate); `num_items`: the utterances it embeds."""

    def __init__(self, config, data, model, mesh):
        from sv_jax import evaluation  # pylint: disable=import-outside-toplevel
        self._evaluation, self.config, self.data = evaluation, config, data
        self._embedder = evaluation.Embedder(model, mesh)
        self.num_items = evaluation.num_embedded(config, data)

    def __call__(self, variables) -> dict:
        return self._evaluation.evaluate(self._embedder, variables, self.config, self.data)


SPEAKER = SpeakerTask()


def get(config):
    """The task `config.task` names ('speaker' where the config has no such key)."""
    name = config.get("task", "speaker")
    if name == "speaker":
        return SPEAKER
    if name == "tagging":
        from sv_jax import tagging_task  # pylint: disable=import-outside-toplevel
        return tagging_task.TAGGING
    raise ConfigError(f"unknown config task {name!r}; choose one of {list(NAMES)}")
