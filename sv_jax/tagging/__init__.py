"""The audio-tagging task: models (MLP, CNN, RNN, CRNN), their analytic MACs, the loss and the clip metrics.

`create_tagging_model(config.model, num_classes)` builds a model whose call on log-mel features [B, T, F] returns
`TaggingOutput(clip=[B, classes], frame=[B, T', classes])` logits (sv_jax.tagging.models);
`macs.forward_macs` counts its multiply-adds per clip; `metrics` scores clip logits against weak labels (numpy).
"""

from sv_jax.tagging.models import (FAMILIES, POOLINGS, TaggingOutput, binary_cross_entropy, config_fields,
                                   create_tagging_model)

__all__ = ["FAMILIES", "POOLINGS", "TaggingOutput", "binary_cross_entropy", "config_fields", "create_tagging_model"]
