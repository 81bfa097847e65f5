"""Audio input for sv_jax: manifests, decoding, Kaldi fbank, tf.data pipelines and the synthetic corpus.

This package never imports jax or sv_jax; it yields numpy batches and can be tested and benchmarked alone.
"""
