"""Audio tagging (`config.task = 'tagging'`): DESED's 10 classes, weak labels, 10-s clips, the DCASE task-4 setup.

Starts from configs/default.py (the optimizer, training loop, checkpoints and profiling are shared; its speaker
sections, `loss` and the ResNet fields of `model`, are unused here) and sets what tagging differs in. The model is
the DCASE task-4 baseline CRNN (sv_jax/tagging/models.py); configs/tagging/<family>.py give every family in three
sizes. On a DESED tree:

    python -m sv_jax.main --config=configs/tagging/crnn.py:medium --config.data.source=desed \\
        --config.data.tagging.desed_root=/data/DESED --workdir=runs/crnn
"""

import ml_collections
from ml_collections import config_dict

from configs import default


def get_config():
    config = default.get_config()
    config.task = "tagging"

    data = config.data
    data.source = "synthetic"  # 'synthetic' (built-in corpus, generated on first use) | 'desed' (data.tagging.desed_root)
    data.num_mel_bins = 128
    data.num_frames = 625  # frames of a clip: 10 s at a 16-ms shift (Kaldi's snip_edges=False count)
    data.batch_size = 48  # the DCASE baseline's 12 + 12 + 24
    data.speed_perturb = False
    data.tagging = t = ml_collections.ConfigDict()
    t.desed_root = ""  # DESED root: audio/<split>/... and metadata/<split>/*.tsv (data_pipeline/tagging.py)
    t.train_split = "train"  # weak labels
    t.eval_split = "validation"  # strong labels, read as weak (a clip's classes)
    t.clip_seconds = 10.0  # clips are cut or zero-padded to this
    t.frame_length_ms = 128.0  # DCASE task 4: 2048-sample windows every 256 samples at 16 kHz
    t.frame_shift_ms = 16.0
    t.mean_normalize = False  # the models scale their input per clip (model.input_norm)
    t.resample = False  # True: audio at another rate is resampled while reading (else an error naming the file)
    t.synthetic_root = ""  # where the built-in corpus is written; '' = <workdir>/tagging_synthetic
    t.synthetic = s = ml_collections.ConfigDict()  # data_pipeline.tagging_synthetic.TaggingCorpusSpec
    s.num_train_clips = 300
    s.num_validation_clips = 100
    s.min_events = 1
    s.max_events = 3
    s.snr_db_min = 6.0
    s.snr_db_max = 30.0
    s.seed = 0

    model = config.model
    model.name = "CRNN"  # 'MLP' | 'CNN' | 'RNN' | 'CRNN'; unset fields below keep the family's defaults
    model.hidden_sizes = config_dict.placeholder(tuple)  # MLP: per-frame Dense widths
    model.channels = config_dict.placeholder(tuple)  # CNN (two convs per block) / CRNN (one conv + GLU per block)
    model.pool_sizes = config_dict.placeholder(tuple)  # CNN / CRNN: (time, frequency) pooling after each block
    model.rnn_hidden_size = config_dict.placeholder(int)  # RNN / CRNN: bidirectional GRU units per direction
    model.rnn_layers = config_dict.placeholder(int)
    model.dropout = config_dict.placeholder(float)  # CRNN 0.5, others 0
    model.pooling = config_dict.placeholder(str)  # 'mean' | 'attention' | 'dcase_attention' (the CRNN's)
    model.input_norm = config_dict.placeholder(str)  # 'minmax' (per clip, the baseline's scaler) | 'none'

    optim = config.optim  # the baseline's Adam at 1e-3, here with a short warm-up and a decay to 1e-4
    optim.name = "adam"
    optim.initial_lr = 1e-3
    optim.final_lr = 1e-4
    optim.warmup_fraction = 0.05
    optim.weight_decay = 0.0
    optim.scale_lr_by_batch = False

    config.train.num_epochs = 200  # the baseline's
    config.train.average_last = 0  # the last state is evaluated
    config.train.log_every_steps = 20
    config.eval.batch_frames = 625 * 48  # 48 clips per evaluation batch
    return config
