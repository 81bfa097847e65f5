"""The tagging demo: a small CRNN learns the built-in synthetic corpus's 10 event classes, on a CPU, in minutes.

    python -m sv_jax.main --config=configs/tagging_demo.py

Generates the corpus (300 training clips with weak labels, 100 held-out clips with strong labels, 10 s each) under
runs/tagging_demo/tagging_synthetic, trains the DCASE baseline's CRNN shape at the small size of
configs/tagging/crnn.py, and scores the held-out clips: mAP and macro F1 (README: measured figures).
"""

from configs import tagging


def get_config():
    config = tagging.family_config("CRNN", "small")
    config.data.batch_size = 16
    config.model.dropout = 0.2  # the baseline's 0.5 is for 200 epochs of DESED; this run is short
    config.train.num_epochs = 12
    config.optim.initial_lr = 3e-3
    config.optim.final_lr = 3e-4
    config.optim.warmup_fraction = 0.05  # as a fraction, so that a longer demo keeps its shape
    config.train.log_every_steps = 19
    config.train.checkpoint_every_steps = 0  # every epoch
    config.eval.batch_frames = 625 * 20  # 20 clips per evaluation batch: 5 batches of the 100 held-out clips
    return config
