"""Kaldi's frame arithmetic (snip_edges=True): samples per frame and frame counts, with numpy only.

data_pipeline.features (the TensorFlow fbank) re-exports these; tools that only count frames (the inference-cost
table, on machines without TensorFlow) import this module.
"""

import numpy as np


def _samples(sample_rate, ms):
    # Kaldi: static_cast<int32>(samp_freq * 0.001 * ms), with float options promoted to double.
    return int(float(np.float32(sample_rate)) * 0.001 * float(np.float32(ms)))


def frame_sizes(sample_rate, frame_length_ms, frame_shift_ms):
    length, shift = _samples(sample_rate, frame_length_ms), _samples(sample_rate, frame_shift_ms)
    if length < 1 or shift < 1:
        raise ValueError(f"frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} at "
                         f"{sample_rate} Hz give {length} and {shift} samples; both must be >= 1")
    return length, shift


def num_samples_for_frames(num_frames, sample_rate=16000, frame_length_ms=25.0, frame_shift_ms=10.0) -> int:
    """Samples needed for exactly `num_frames` frames with snip_edges=True (32240 for 200 at 16 kHz)."""
    length, shift = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    return (int(num_frames) - 1) * shift + length


def num_frames_for_samples(num_samples, sample_rate=16000, frame_length_ms=25.0, frame_shift_ms=10.0) -> int:
    """Frames that `fbank(..., snip_edges=True)` returns for `num_samples` samples (0 if shorter than a frame)."""
    length, shift = frame_sizes(sample_rate, frame_length_ms, frame_shift_ms)
    if num_samples < length:
        return 0
    return 1 + (int(num_samples) - length) // shift
