"""The audio-tagging task for the shared trainer (`config.task = 'tagging'`; sv_jax.tasks describes the interface).

Model side: `create_model` is sv_jax.tagging.create_tagging_model; the loss is the multi-label binary cross-entropy
of the clip logits against the weak labels (`tagging_loss`), with dropout drawn from a key that is a function of
`config.seed` and the step alone, so a resumed run draws what an uninterrupted one would; the forward (inference,
what the study's `forward` program measures) is the clip logits of whole clips.

Data side (`config.data.tagging`, configs/tagging_default.py): `data.source = 'synthetic'` generates the built-in
corpus (data_pipeline.tagging_synthetic) under the workdir on first use; `'desed'` reads a DESED tree
(`data.tagging.desed_root`, data_pipeline.tagging's layout). Training reads `data.tagging.train_split`, evaluation
`data.tagging.eval_split`; bad audio stops the run naming the file, or under `data.on_bad_audio='skip'` is skipped
and counted (the summary says how many). Evaluation: clip logits of every held-out clip, scored by mAP (macro
average precision), macro F1 at 0.5 and the per-class AP (sv_jax.tagging.metrics, as scikit-learn computes them).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cli import ConfigError, MissingInputError, UserError
from sv_jax import models as speaker_models
from sv_jax.tagging import macs
from sv_jax.tagging import metrics
from sv_jax.tagging import models

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "desed")
UNROLLED = "bidirectional GRUs' scans unrolled for counting (XLA counts a scan's body once)"
# Every family's train step is counted so, so that the families share one source (profiling.study.analysis fits only
# counts of one source together).
UNOPTIMIZED = ("tagging train steps counted before optimisation, no bytes (compiling the GRUs' unrolled backward "
               "takes minutes)")


def tagging_loss(model, seed: int) -> Callable:
    """Loss for sv_jax.step.train_step: binary cross-entropy of the clip logits, mean over clips and classes.
    Metrics: `accuracy`, the share of (clip, class) decisions at probability 0.5 that match the weak labels."""
    def loss_fn(params, batch_stats, batch, step):
        variables = {"params": params, **({"batch_stats": batch_stats} if batch_stats else {})}
        output, updates = model.apply(variables, batch["feats"], train=True, mutable=["batch_stats"],
                                      rngs={"dropout": jax.random.fold_in(jax.random.key(seed), step)})
        loss = models.binary_cross_entropy(output.clip, batch["labels"])
        accuracy = jnp.mean((output.clip > 0) == (batch["labels"] > 0.5))
        return loss, ({"accuracy": accuracy}, updates.get("batch_stats", {}))
    return loss_fn


@dataclasses.dataclass(frozen=True)
class TaggingData:
    """What a tagging run reads: the training and held-out clips (data_pipeline.tagging.TaggingManifest) and the
    features' settings."""

    train: Any
    eval: Any
    features: Any  # data_pipeline.tagging.FeatureConfig
    root: pathlib.Path

    @property
    def num_classes(self) -> int:
        return self.train.labels.shape[1]


def feature_config(data_config):
    """The log-mel settings `config.data` describes (data_pipeline.tagging.FeatureConfig); its frame count must be
    `data.num_frames`, the models' input length."""
    from data_pipeline import tagging  # pylint: disable=import-outside-toplevel
    t = data_config.tagging
    features = tagging.FeatureConfig(sample_rate=data_config.sample_rate, clip_seconds=t.clip_seconds,
                                     num_mel_bins=data_config.num_mel_bins, frame_length_ms=t.frame_length_ms,
                                     frame_shift_ms=t.frame_shift_ms, mean_normalize=t.mean_normalize)
    if features.num_frames != data_config.num_frames:
        raise ConfigError(f"config data.num_frames={data_config.num_frames}, but {t.clip_seconds:g}-s clips at a "
                          f"{t.frame_shift_ms:g}-ms shift have {features.num_frames} frames: set "
                          f"--config.data.num_frames={features.num_frames} (or change data.tagging.clip_seconds)")
    return features


def synthetic_spec(data_config):
    """The built-in corpus `data.tagging.synthetic` describes, its clips as long as `data.tagging.clip_seconds`."""
    from data_pipeline import tagging_synthetic  # pylint: disable=import-outside-toplevel
    fields = dict(data_config.tagging.synthetic)
    try:
        return tagging_synthetic.TaggingCorpusSpec(clip_seconds=data_config.tagging.clip_seconds,
                                                   sample_rate=data_config.sample_rate, **fields)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"config data.tagging.synthetic: {error}") from error


class TaggingEvaluator:
    """Clip logits of every held-out clip, data-parallel over the mesh (sv_jax.evaluation.Embedder, which every
    process feeds its own rows of each batch), then the clip metrics; clips skipped as bad audio are left out of the
    metrics and counted (`skipped_clips`)."""

    def __init__(self, config, data: TaggingData, model, mesh):
        from sv_jax import evaluation  # pylint: disable=import-outside-toplevel
        self.config, self.data = config, data
        self.num_items = len(data.eval)
        self._embedder = evaluation.Embedder(model, mesh, apply_fn=lambda v, feats, lengths: model.apply(
            v, feats, lengths).clip, audio_key=str(data.eval.audio_dir))

    def __call__(self, variables) -> dict[str, Any]:
        from data_pipeline import input_pipeline, tagging  # pylint: disable=import-outside-toplevel
        ev, data_config = self.config.eval, self.config.data
        rows = max(1, ev.batch_frames // data_config.num_frames)  # whole clips: every row is num_frames long
        batches = tagging.batches(self.data.eval, batch_size=rows, num_epochs=1, shuffle=False,
                                  feature_config=self.data.features, resample=data_config.tagging.resample,
                                  on_bad_audio=data_config.on_bad_audio, bad_audio_log=input_pipeline.BadAudioLog(),
                                  prefetch_batches=data_config.prefetch_batches)
        full_length = lambda b: {**b, "lengths": np.full(len(b["index"]), b["feats"].shape[1], np.int32)}
        logits = self._embedder(variables, map(full_length, batches), len(self.data.eval), ev.batch_frames,
                                allow_missing=data_config.on_bad_audio == "skip")
        present = ~np.isnan(logits).any(axis=1)
        results = metrics.clip_metrics(self.data.eval.labels[present], logits[present], _class_names())
        return results | {"clips": int(present.sum()), "skipped_clips": int((~present).sum())}


def _class_names() -> tuple[str, ...]:
    from data_pipeline import tagging  # pylint: disable=import-outside-toplevel
    return tagging.CLASSES


class TaggingTask:
    """Audio tagging (module docstring)."""

    name = "tagging"
    uses_margin = False
    item = "clip"
    # The forward and the weight gradients: a tagger's first layer (an MLP's 128 -> hidden Dense is most of it) needs
    # no input gradient, so three passes would overstate the floor (a 1-layer MLP's step counts 2.4 passes).
    train_step_passes = 2

    def create_model(self, model_config, num_classes: int, *, for_counting: bool = False):
        return models.create_tagging_model(model_config, num_classes, for_counting=for_counting)

    def init_variables(self, model, rng, feats) -> dict:
        return model.init(rng, feats, train=False)

    def loss_fn(self, model, *, margin_fn, seed: int) -> Callable:
        del margin_fn  # no margin in tagging
        return tagging_loss(model, seed)

    def feat_shape(self, data_config) -> tuple[int, int]:
        return data_config.num_frames, data_config.num_mel_bins

    def label_batch(self, batch_size: int, num_classes: int) -> dict[str, Any]:
        return {"labels": jax.ShapeDtypeStruct((batch_size, num_classes), jnp.float32)}

    def random_labels(self, rng: np.random.Generator, batch_size: int, num_classes: int) -> dict[str, np.ndarray]:
        """Multi-hot labels with about two classes of ten per clip, as the synthetic corpus has."""
        return {"labels": (rng.random((batch_size, num_classes)) < 0.2).astype(np.float32)}

    def forward(self, model) -> Callable:
        """(variables, feats) -> clip logits, what inference computes."""
        return lambda variables, feats: model.apply(variables, feats).clip

    def forward_macs(self, config, num_classes: int) -> int:
        return macs.forward_macs(config.model, num_classes, config.data.num_frames, config.data.num_mel_bins)

    def counting_fallback(self, model_config) -> str:
        return UNROLLED if model_config.name in ("RNN", "CRNN") else ""

    def train_step_counted_unoptimized(self, model_config) -> str:
        return UNOPTIMIZED

    def param_counts(self, params) -> dict[str, int]:
        return {"params": speaker_models.count_params(params)}

    def default_num_classes(self, config) -> int:
        return len(_class_names())

    def resolve_data(self, data_config, workdir) -> TaggingData:
        from data_pipeline import tagging, tagging_synthetic  # pylint: disable=import-outside-toplevel
        if data_config.source not in SOURCES:
            raise ConfigError(f"unknown data.source {data_config.source!r} for tagging; choose one of "
                              f"{list(SOURCES)}")
        features = feature_config(data_config)
        t = data_config.tagging
        if data_config.source == "synthetic":
            from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
            root = pathlib.Path(t.synthetic_root or pathlib.Path(workdir) / "tagging_synthetic")
            spec = synthetic_spec(data_config)
            if jax.process_index() == 0:
                tagging_synthetic.generate_corpus(root, spec)
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("tagging corpus written")
            tagging_synthetic.generate_corpus(root, spec)  # returns at once: complete
        else:
            if not t.desed_root:
                raise ConfigError("config data.tagging.desed_root is empty: set --config.data.tagging.desed_root="
                                  "<DESED root> (or try configs/tagging_demo.py, which generates its own data)")
            root = pathlib.Path(t.desed_root).expanduser()
            if not root.is_dir():
                raise MissingInputError(f"config data.tagging.desed_root={t.desed_root!r}: no such directory; "
                                        "fix the path")
        on_bad = data_config.on_bad_audio
        train = tagging.load_split(root, t.train_split, on_bad_audio=on_bad)
        held_out = tagging.load_split(root, t.eval_split, on_bad_audio=on_bad)
        for split, manifest in ((t.train_split, train), (t.eval_split, held_out)):
            if len(manifest) == 0:
                raise UserError(f"{manifest.metadata}: no clips in the {split} split: check "
                                f"data.tagging.{'train' if manifest is train else 'eval'}_split and the tsv")
        log.info("tagging: %d training clips (%s), %d held-out (%s) in %s", len(train), t.train_split,
                 len(held_out), t.eval_split, root)
        return TaggingData(train=train, eval=held_out, features=features, root=root)

    def num_train_items(self, data: TaggingData) -> int:
        return len(data.train)

    def new_bad_audio_log(self):
        from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel
        return input_pipeline.BadAudioLog()

    def train_batches(self, config, data: TaggingData, *, batch_size: int, seed: int, start_index: int,
                      bad_audio_log, process_index: int = 0, process_count: int = 1):
        from data_pipeline import tagging  # pylint: disable=import-outside-toplevel
        return tagging.batches(data.train, batch_size=batch_size, seed=seed, start_index=start_index,
                               feature_config=data.features, resample=config.data.tagging.resample,
                               on_bad_audio=config.data.on_bad_audio, bad_audio_log=bad_audio_log,
                               process_index=process_index, process_count=process_count,
                               prefetch_batches=config.data.prefetch_batches)

    def evaluator(self, config, data: TaggingData, model, mesh) -> TaggingEvaluator:
        return TaggingEvaluator(config, data, model, mesh)

    def data_summary(self, data: TaggingData, bad_audio_log) -> dict[str, Any]:
        return {"train_clips": len(data.train), "eval_clips": len(data.eval), "classes": data.num_classes,
                "source": str(data.root), "missing_files_skipped": len(data.train.skipped) + len(data.eval.skipped),
                "bad_audio_skipped": bad_audio_log.count, "bad_audio_files": bad_audio_log.files[:100]}

    def eval_scalars(self, results: dict) -> dict[str, float]:
        return {f"eval/{key}": value for key, value in results.items() if key not in ("clips", "skipped_clips")}


TAGGING = TaggingTask()
