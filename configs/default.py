"""Every sv_jax setting, with WeSpeaker's VoxCeleb2 ResNet recipe as the defaults.

Other configs start from this one and change what differs. Fields are grouped by consumer (data, model, loss,
optim, train, eval, profile); units are in the names. Run with a model file, e.g.

    python -m sv_jax.main --config=configs/r34.py --config.data.train_dir=... --workdir=runs/r34
"""

import ml_collections
from ml_collections import config_dict


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 42  # parameters, data order, crops and dither all derive from it
    config.task = "speaker"  # 'speaker' (this file) | 'tagging' (configs/tagging_default.py): sv_jax/tasks.py

    config.data = data = ml_collections.ConfigDict()
    data.source = "voxceleb"  # 'voxceleb' (paths below) | 'synthetic' (built-in corpus, generated on first use)
    data.train_dir = ""  # VoxCeleb2 dev wav tree: <speaker>/<video>/<utt>.wav, 16 kHz mono
    data.train_shards = ""  # shards written from train_dir (python -m data_pipeline.shards): read instead of files
    data.shuffle_buffer = 2500  # records in the local shuffle buffer when reading shards (WeSpeaker: 2500)
    data.eval_dir = ""  # root the trial lists' paths are relative to (VoxCeleb1 wav tree)
    data.trials = ""  # one or more trial lists, comma-separated; each is named by its file stem
    data.sample_rate = 16000  # Hz; audio at another rate is an error (resample first)
    data.num_frames = 200  # training chunk in frames (200 = 2.015 s = 32,240 samples)
    data.batch_size = 256  # global batch, split across all devices of all processes
    data.num_mel_bins = 80
    data.frame_length_ms = 25.0
    data.frame_shift_ms = 10.0
    data.window_type = "hamming"
    data.dither = 1.0  # training only; evaluation extracts with dither 0
    data.speed_perturb = True  # speeds 0.9/1.0/1.1, perturbed copies are new classes (speakers x 3)
    data.aug_prob = 0.6  # probability of one augmentation per training chunk: RIR reverb or one MUSAN noise
    data.rir_dir = ""  # RIRS_NOISES/simulated_rirs (any tree of wavs); '' = no reverb
    data.musan_dir = ""  # MUSAN root with noise/, speech/, music/; '' = no additive noise
    data.snr_noise_db = (0.0, 15.0)  # SNR range per MUSAN category (WeSpeaker's)
    data.snr_speech_db = (10.0, 30.0)
    data.snr_music_db = (5.0, 15.0)
    data.prefetch_batches = 2  # batches tf.data prepares ahead of the accelerator
    data.on_bad_audio = "error"  # 'error': stop naming the file | 'skip': log it once, count it, go on
    data.synthetic = synthetic = ml_collections.ConfigDict()  # used when source == 'synthetic'
    synthetic.root = ""  # where the corpus is written; '' = <workdir>/synthetic
    synthetic.num_train_speakers = 200
    synthetic.num_test_speakers = 40  # held out: trials are between speakers never seen in training
    synthetic.utts_per_train_speaker = 12
    synthetic.utts_per_test_speaker = 8
    synthetic.min_seconds = 2.0
    synthetic.max_seconds = 4.0
    synthetic.seed = 0

    config.model = model = ml_collections.ConfigDict()
    # ResNet18/34/50/101/152/221/293, or 'ResNet' with block and num_blocks below; Gemini DF-ResNets DFResNet60/114/
    # 183/237, or 'DFResNet' with num_blocks (sv_jax/models/dfresnet.py)
    model.name = "ResNet34"
    model.block = config_dict.placeholder(str)  # 'basic' | 'bottleneck' (only with name 'ResNet')
    model.num_blocks = config_dict.placeholder(tuple)  # blocks per stage, e.g. (2, 2, 10, 2) ('ResNet', 'DFResNet')
    # DF-ResNets only: the four downsampling layers' strides along time (frequency: 2). Unset: WeSpeaker's T14c
    # (1, 2, 1, 1); (2, 2, 2, 2) is the symmetric-stride variant, not one of WeSpeaker's models.
    model.time_strides = config_dict.placeholder(tuple)
    model.width = 32  # planes of the first stage (WeSpeaker's m_channels); stages have 1x, 2x, 4x, 8x
    model.embed_dim = 256
    model.dtype = "float32"  # 'float32' | 'bfloat16' compute; parameters, BN statistics and loss stay float32
    # 'none' | 'partial' (shape-preserving blocks become RevNet couplings: their activations are recomputed in the
    # backward pass, not stored) | 'full' (stage transitions invertible too). Reversible stages compute in float32.
    model.reversible = "none"
    # Convolutions on CPU: 'auto' (oneDNN where it builds, float32; XLA's otherwise and on GPUs), 'onednn' (an error
    # where it cannot), 'xla' (XLA's everywhere). sv_jax/models/cpu_conv.py
    model.cpu_conv = "auto"
    model.head = ml_collections.ConfigDict()
    model.head.type = "arc_margin"
    model.head.scale = 32.0
    model.head.easy_margin = False

    config.loss = loss = ml_collections.ConfigDict()  # ArcMargin margin schedule (WeSpeaker's, epochs from 1)
    loss.initial_margin = 0.0
    loss.final_margin = 0.2
    loss.increase_start_epoch = 20
    loss.fix_start_epoch = 40
    # The same two points as fractions of training (0-1; None: the epochs above apply): the margin starts rising
    # after `increase_start_fraction` of the run and is fixed after `fix_start_fraction`, whatever num_epochs is.
    loss.increase_start_fraction = config_dict.placeholder(float)
    loss.fix_start_fraction = config_dict.placeholder(float)
    loss.increase_type = "exp"  # 'exp' | 'linear'

    config.optim = optim = ml_collections.ConfigDict()
    optim.name = "sgd"  # 'sgd' | 'adam' | 'adamw'
    optim.schedule = "exponential_decrease"
    optim.initial_lr = 0.1
    optim.final_lr = 5e-5
    optim.warmup_epochs = 6.0
    optim.warmup_fraction = config_dict.placeholder(float)  # warm-up as a fraction of training (None: warmup_epochs)
    optim.warm_from_zero = True
    optim.scale_lr_by_batch = True  # multiply the schedule by global batch / 64, as WeSpeaker does
    optim.momentum = 0.9
    optim.nesterov = True
    optim.weight_decay = 1e-4  # coupled (added to the gradient) for sgd/adam, decoupled for adamw
    optim.beta1 = 0.9
    optim.beta2 = 0.999
    optim.eps = 1e-8
    optim.state_bits = 32  # 32 | 8: 8 stores momentum / Adam moments block-wise quantized as uint8 (dynamic maps)

    config.train = train = ml_collections.ConfigDict()
    train.num_epochs = 150
    train.steps_per_epoch = 0  # 0 = training utterances // global batch
    train.log_every_steps = 100
    train.checkpoint_every_steps = 0  # 0 = at the end of every epoch (WeSpeaker's cadence); a preemption saves too
    train.keep_checkpoints = 3  # at least average_last + 1 are kept when averaging (sv_jax/averaging.py)
    # Average the last N checkpoints at the end, evaluate the average and keep it (<workdir>/averaged), as WeSpeaker's
    # avg_model (its recipe: 10); 0 or 1 = evaluate the last state.
    train.average_last = 10
    train.eval_every_steps = 0  # 0 = evaluate only at the end
    # A NaN/Inf loss or gradient: 'stop' ends the run with an error naming the step (the last checkpoint, written
    # before it, is kept) | 'skip' leaves the state as it was, counts the step and goes on.
    train.on_nonfinite = "stop"
    train.max_skips_in_a_row = 20  # with 'skip': stop anyway after this many non-finite steps in a row (diverged)

    config.eval = ev = ml_collections.ConfigDict()
    ev.bucket_frames = 200  # utterances are padded to a multiple of this (exact: the model masks padding)
    ev.batch_frames = 32000  # frames per evaluation batch (rows = batch_frames // padded length, at least 1)
    ev.subtract_mean = True  # subtract the mean training embedding before cosine scoring
    ev.as_norm = False  # also report adaptive s-norm scores ('<trials>_asnorm')
    ev.as_norm_top_k = 300  # WeSpeaker's VoxCeleb recipe; clamped (with a warning) to the cohort's speakers
    # The mean (subtract_mean) and the AS-norm cohort, one mean embedding per training speaker as in WeSpeaker, come
    # from this many seeded utterances of every training speaker (0 = all of them, WeSpeaker's exact recipe: all
    # 1,092,009 of VoxCeleb2 dev; 5 embeds 29,970). num_train_utts caps the total (0 = no cap); a cap below the
    # speaker count leaves speakers out of the cohort, and results label it '<trials>_asnorm'.cohort.
    ev.cohort_utts_per_speaker = 5
    ev.num_train_utts = 0

    config.profile = profile = ml_collections.ConfigDict()  # what a run costs (profiling/; README "Cost")
    profile.enabled = True  # FLOPs and memory of the compiled step, energy windows, carbon, in summary.json
    profile.skip_steps = 5  # steps after each (re)start kept out of energy windows: compilation and warm-up
    profile.window_steps = 100  # training steps per energy window (aim for >= 5 s per window)
    profile.idle_seconds = 5.0  # idle power measured before compiling, to separate dynamic from static energy
    profile.idle_settle_s = 5.0  # waited before the idle baseline (a process that just started is not yet idle)
    profile.idle_parts = 5  # the baseline in this many equal parts: their spread is reported (idle_w_std)
    # GPUs metered through NVML: 'jax' (the boards behind this process's JAX devices) | 'visible'
    # (CUDA_VISIBLE_DEVICES) | 'all' (every board on the host) | NVML indices, e.g. '0,1'. Host-wide choices
    # ('visible', 'all', indices) and RAPL are metered by one process per host (sv_jax/job_meter.py).
    profile.nvml_gpus = "jax"
    profile.poll_interval_s = 0.1  # power-sampling period where a sensor has no energy counter
    profile.trace_steps = ()  # steps traced with jax.profiler into <workdir>/trace, e.g. (20, 21, 22)
    # Python calls in traces too. Off: JAX's Python tracer hooks every thread, and stopping it while orbax's
    # checkpoint threads come and go crashed (segfault in stop_trace, ~1 run in 5 with 14 traces; jax 0.10.2 CPU).
    profile.trace_python = False
    profile.intensity_g_per_kwh = 475.0  # grid carbon intensity (world average); see profile.country
    profile.country = ""  # ISO code to use that grid's annual average instead (profiling/carbon.py table)
    profile.pue = 1.0  # data-centre power usage effectiveness multiplying the measured energy
    profile.peak_tflops = 0.0  # device peak for perf/mfu; 0 = look the device up (profiling/peaks.py)
    return config
