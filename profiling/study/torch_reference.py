"""A PyTorch reference of sv_jax's ResNets, for the benchmark's side-by-side timing (`--torch_reference`).

    python -m profiling.study.benchmark --config=configs/r34.py --torch_reference   # starts this module as a child

Written for this project from sv_jax/models (itself layer for layer WeSpeaker's wespeaker/models/resnet.py), not
copied from WeSpeaker. Features (B, T, F) become an NCHW image (B, 1, F, T), F as height as in sv_jax's NHWC image;
a 3x3 stem conv (1 -> width) with BN and ReLU; four stages of width * (1, 2, 4, 8) planes with strides (1, 2, 2, 2);
basic (two 3x3) or bottleneck (1x1, 3x3 with the stride, 1x1 x4) blocks; a conv1x1+BN projection shortcut where the
shape changes; no conv biases; BN eps 1e-5, momentum 0.1; TSTP as sv_jax/models/pooling.py computes it (mean and
unbiased std over time, 1e-7 under the root, one frame counted as one degree of freedom, flattened channel-major);
one Linear `seg_1` to the embedding. The training head is ArcMarginProduct as sv_jax/models/heads.py computes it,
the loss cross-entropy, the optimizer the config's as sv_jax/optim builds it (SGD with coupled weight decay,
momentum and Nesterov; Adam with coupled decay; AdamW). Initialisation is PyTorch's default (which sv_jax imitates)
and Xavier-uniform for the head. The backbones' modules are named as WeSpeaker's (`conv1`, `layer1.0.bn2`,
`downsample_layers.1.0`, `stages.2.0.conv2`, `seg_1`), so `backbone.state_dict()` is a WeSpeaker checkpoint and
`copy_flax_variables` maps a Flax model's variables onto it through sv_jax/wespeaker.py. DF-ResNets ('inverted'
blocks) as sv_jax/models/dfresnet.py: a stem, per stage a downsampling conv3x3+BN and inverted bottlenecks.

Run as a module it is the benchmark's child process (profiling.study.torch_comparison starts it), so that PyTorch's
thread pool never shares a process with XLA's; it imports torch, numpy, the standard library and sv_jax/wespeaker.py
(numpy only) and nothing that imports jax. It reads one
JSON request per line on stdin and writes one JSON answer per line on stdout (anything else written to stdout goes
to stderr):

    {"op": "init", "spec": {ReferenceSpec fields}, "threads": n} -> {"torch_version", "threads", "params", "optimizer"}
    {"op": "warmup", "calls": n}       -> {}                n train steps, then n forward calls
    {"op": "train_step", "calls": n}   -> {"seconds": s}    n train steps, timed in this process
    {"op": "forward", "calls": n}      -> {"seconds": s}    n forward calls under torch.inference_mode
    a failed request                   -> {"error": traceback}

The end of stdin ends the process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import traceback
from typing import Mapping, Sequence, TextIO

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sv_jax import wespeaker  # numpy only: the WeSpeaker <-> sv_jax name mapping

STAGE_STRIDES = (1, 2, 2, 2)
STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)
STD_EPSILON = 1e-7  # sv_jax/models/pooling.py (WeSpeaker's)


@dataclasses.dataclass(frozen=True)
class ReferenceSpec:
    """What the reference builds: the sv_jax config fields it reads (profiling.study.torch_comparison makes one)."""

    block: str  # 'basic' | 'bottleneck' | 'inverted' (DF-ResNets)
    num_blocks: Sequence[int]  # blocks per stage, 4 entries
    width: int
    embed_dim: int
    num_mel_bins: int
    num_frames: int
    num_classes: int
    batch_size: int
    scale: float = 32.0
    easy_margin: bool = False
    margin: float = 0.2
    optimizer: str = "sgd"  # 'sgd' | 'adam' | 'adamw', as optim.name
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    betas: Sequence[float] = (0.9, 0.999)
    eps: float = 1e-8
    seed: int = 0
    time_strides: Sequence[int] = (1, 2, 1, 1)  # DF-ResNets only: WeSpeaker's T14c


def _conv(in_planes: int, planes: int, kernel: int, stride=1, groups: int = 1) -> nn.Conv2d:
    """A conv with no bias and symmetric padding kernel // 2."""
    return nn.Conv2d(in_planes, planes, kernel, stride, padding=kernel // 2, groups=groups, bias=False)


def _bn(planes: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(planes, eps=1e-5, momentum=0.1)


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """A conv1x1+BN projection where the shape changes, otherwise the identity (an empty Sequential)."""
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()
    return nn.Sequential(_conv(in_planes, out_planes, 1, stride), _bn(out_planes))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(in_planes, planes, 3, stride), _bn(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3), _bn(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(in_planes, planes, 1), _bn(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, stride), _bn(planes)
        self.conv3, self.bn3 = _conv(planes, planes * 4, 1), _bn(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


class InvertedBottleneck(nn.Module):
    """DF-ResNets' block on d channels: conv1x1 d -> 4d, depthwise 3x3 on 4d, conv1x1 4d -> d (each + BN), plus the
    input, ReLU."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.bn1 = _conv(dim, 4 * dim, 1), _bn(4 * dim)
        self.conv2, self.bn2 = _conv(4 * dim, 4 * dim, 3, groups=4 * dim), _bn(4 * dim)
        self.conv3, self.bn3 = _conv(4 * dim, dim, 1), _bn(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + x)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}
INVERTED = "inverted"
DFRESNET_DIMS = (1, 1, 2, 4, 8)  # multiples of the width: stem, then the four stages (WeSpeaker's 32-32-64-128-256)


def tstp(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) -> (B, 2*C*F): mean and unbiased std over time, flattened channel-major (as sv_jax's tstp)."""
    correction = 1 if x.shape[-1] > 1 else 0  # sv_jax divides by max(T - 1, 1)
    std = torch.sqrt(torch.var(x, dim=-1, correction=correction) + STD_EPSILON)
    return torch.cat([x.mean(dim=-1).flatten(1), std.flatten(1)], dim=-1)


def _as_image(feats: torch.Tensor) -> torch.Tensor:
    return feats.transpose(1, 2).unsqueeze(1)  # (B, T, F) -> (B, 1, F, T): F is height, T width


class ResNet(nn.Module):
    """[B, T, F] features -> [B, embed_dim] embeddings; sv_jax.models.resnet.ResNet without reversible stages."""

    def __init__(self, block: str, num_blocks: Sequence[int], width: int, embed_dim: int, num_mel_bins: int):
        super().__init__()
        if block not in BLOCKS or len(num_blocks) != 4:
            raise ValueError(f"block must be one of {sorted(BLOCKS)} and num_blocks 4 ints, got {block!r}, "
                             f"{tuple(num_blocks)}")
        block_cls, in_planes, freq = BLOCKS[block], width, num_mel_bins
        self.conv1, self.bn1 = _conv(1, width, 3), _bn(width)
        for stage, (count, stride, mult) in enumerate(zip(num_blocks, STAGE_STRIDES, STAGE_WIDTH_MULTIPLIERS), 1):
            blocks = []
            for index in range(count):
                blocks.append(block_cls(in_planes, width * mult, stride if index == 0 else 1))
                in_planes = width * mult * block_cls.expansion
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
            freq = -(-freq // stride)  # a stride-s conv with kernel 3 / padding 1 (or 1 / 0) keeps ceil(F / s) rows
        self.seg_1 = nn.Linear(2 * in_planes * freq, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(_as_image(feats))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.seg_1(tstp(x))


class DFResNet(nn.Module):
    """[B, T, F] features -> [B, embed_dim] embeddings; sv_jax.models.dfresnet.DFResNet without reversible stages:
    a 3x3 stem, then per stage a downsampling conv3x3+BN (stride 2 along frequency, `time_strides` along time) and
    inverted bottlenecks."""

    def __init__(self, num_blocks: Sequence[int], width: int, embed_dim: int, num_mel_bins: int,
                 time_strides: Sequence[int] = (1, 2, 1, 1)):
        super().__init__()
        dims = [width * m for m in DFRESNET_DIMS]
        stem = nn.Sequential(_conv(1, dims[0], 3), _bn(dims[0]), nn.ReLU())
        downsample = [nn.Sequential(_conv(dims[i], dims[i + 1], 3, (2, time_strides[i])), _bn(dims[i + 1]))
                      for i in range(4)]
        self.downsample_layers = nn.ModuleList([stem, *downsample])
        self.stages = nn.ModuleList([nn.Sequential(*[InvertedBottleneck(dims[i + 1]) for _ in range(count)])
                                     for i, count in enumerate(num_blocks)])
        freq = num_mel_bins
        for _ in range(4):
            freq = -(-freq // 2)
        self.seg_1 = nn.Linear(2 * dims[-1] * freq, embed_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.downsample_layers[0](_as_image(feats))
        for downsample, stage in zip(self.downsample_layers[1:], self.stages):
            x = stage(downsample(x))
        return self.seg_1(tstp(x))


class ArcMarginProduct(nn.Module):
    """Scaled cosine logits with an additive angular margin on the target class, as sv_jax/models/heads.py."""

    def __init__(self, embed_dim: int, num_classes: int, scale: float = 32.0, easy_margin: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.num_classes, self.scale, self.easy_margin = num_classes, scale, easy_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
        cosine = F.linear(F.normalize(embeddings), F.normalize(self.weight))
        # Clamped away from 0 as in sv_jax, so that the gradient of sqrt stays finite.
        sine = torch.sqrt(torch.clamp(1.0 - cosine * cosine, 1e-12, 1.0))
        phi = cosine * math.cos(margin) - sine * math.sin(margin)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            threshold = math.cos(math.pi - margin)
            phi = torch.where(cosine > threshold, phi, cosine - (1.0 + threshold))
        is_target = F.one_hot(labels, self.num_classes).bool()
        return self.scale * torch.where(is_target, phi, cosine)


class SpeakerNet(nn.Module):
    """Embedding extractor plus margin head, as sv_jax.models.SpeakerNet; `embed` is what inference uses."""

    def __init__(self, backbone: ResNet, head: ArcMarginProduct):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, feats: torch.Tensor, labels: torch.Tensor, margin: float):
        embeddings = self.backbone(feats)
        return embeddings, self.head(embeddings, labels, margin)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        return self.backbone(feats)


def create_model(spec: ReferenceSpec) -> SpeakerNet:
    if spec.block == INVERTED:
        backbone = DFResNet(tuple(spec.num_blocks), spec.width, spec.embed_dim, spec.num_mel_bins,
                            tuple(spec.time_strides))
    else:
        backbone = ResNet(spec.block, tuple(spec.num_blocks), spec.width, spec.embed_dim, spec.num_mel_bins)
    return SpeakerNet(backbone, ArcMarginProduct(spec.embed_dim, spec.num_classes, spec.scale, spec.easy_margin))


def count_params(net: SpeakerNet) -> int:
    """Parameters of the embedding extractor without the head (what sv_jax and WeSpeaker count as the model)."""
    return sum(p.numel() for p in net.backbone.parameters())


def create_optimizer(spec: ReferenceSpec, params) -> torch.optim.Optimizer:
    """torch.optim's equivalent of sv_jax.optim.create_optimizer for `spec.optimizer`, at a constant rate."""
    betas = tuple(spec.betas)
    if spec.optimizer == "sgd":  # optax: add_decayed_weights, then sgd(momentum or None, nesterov)
        return torch.optim.SGD(params, spec.learning_rate, momentum=spec.momentum,
                               nesterov=spec.nesterov and spec.momentum > 0, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, spec.learning_rate, betas=betas, eps=spec.eps, weight_decay=spec.weight_decay)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, spec.learning_rate, betas=betas, eps=spec.eps,
                                 weight_decay=spec.weight_decay)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; choose 'sgd', 'adam' or 'adamw'")


def random_batch(spec: ReferenceSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch sv_jax.programs.random_batch(seed) draws: the same numbers, as tensors."""
    rng = np.random.default_rng(spec.seed)
    feats = rng.standard_normal((spec.batch_size, spec.num_frames, spec.num_mel_bins), np.float32)
    labels = rng.integers(0, spec.num_classes, spec.batch_size).astype(np.int64)
    return torch.from_numpy(feats), torch.from_numpy(labels)


def train_step(net: SpeakerNet, optimizer: torch.optim.Optimizer, feats: torch.Tensor, labels: torch.Tensor,
               margin: float) -> torch.Tensor:
    """One optimisation step (the net in train mode): zero_grad, forward with the head, loss, backward, step."""
    optimizer.zero_grad()
    _, logits = net(feats, labels, margin)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    optimizer.step()
    return loss.detach()


def describe_optimizer(optimizer: torch.optim.Optimizer) -> str:
    """E.g. 'SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0001)'."""
    keys = ("lr", "momentum", "nesterov", "betas", "eps", "weight_decay")
    settings = ", ".join(f"{k}={optimizer.defaults[k]!r}" for k in keys if k in optimizer.defaults)
    return f"{type(optimizer).__name__}({settings})"


def copy_flax_variables(net: SpeakerNet, variables: Mapping) -> None:
    """Loads the variables of an sv_jax.models.SpeakerNet ({'params': ..., 'batch_stats': ...}, any arrays numpy can
    read) into `net` through sv_jax/wespeaker.py's mapping (the backbone's modules are named as WeSpeaker's, the
    head is `projection` there and `head` here): every parameter and BN statistic exactly once, or a ValueError
    naming what did not match."""
    state = {name: torch.tensor(value) for name, value in wespeaker.export_state_dict(variables).items()}
    if wespeaker.HEAD_KEY in state:
        state["head.weight"] = state.pop(wespeaker.HEAD_KEY)
    state = {name if name.startswith("head.") else f"backbone.{name}": value for name, value in state.items()}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"Flax variables do not match the torch model: missing {missing}, unexpected {unexpected}")


class Session:
    """The child's model, optimizer and batch; times blocks of train steps and forward calls."""

    def __init__(self, spec: ReferenceSpec):
        torch.manual_seed(spec.seed)
        self.spec, self.net = spec, create_model(spec)
        self.optimizer = create_optimizer(spec, self.net.parameters())
        self.feats, self.labels = random_batch(spec)

    def time_train_steps(self, calls: int) -> float:
        self.net.train()
        start = time.perf_counter()
        for _ in range(calls):
            train_step(self.net, self.optimizer, self.feats, self.labels, self.spec.margin)
        return time.perf_counter() - start  # CPU operations are synchronous: all of them are done

    def time_forward(self, calls: int) -> float:
        self.net.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(calls):
                self.net.embed(self.feats)
        return time.perf_counter() - start


def _answer(session: Session | None, request: Mapping) -> tuple[Session | None, dict]:
    op = request["op"]
    if op == "init":
        torch.set_num_threads(int(request["threads"]))
        spec = ReferenceSpec(**request["spec"])
        session = Session(spec)
        return session, {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                         "params": count_params(session.net), "optimizer": describe_optimizer(session.optimizer),
                         "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}
    if session is None:
        raise RuntimeError(f"request {op!r} before 'init'")
    timed = {"train_step": session.time_train_steps, "forward": session.time_forward}
    if op == "warmup":
        for run in timed.values():
            run(request["calls"])
        return session, {}
    if op in timed:
        return session, {"seconds": timed[op](request["calls"])}
    raise ValueError(f"unknown request {op!r}")


def serve(requests: TextIO, answers: TextIO) -> None:
    """Answers each JSON line of `requests` with one JSON line on `answers` until `requests` ends."""
    session = None
    for line in requests:
        try:
            session, answer = _answer(session, json.loads(line))
        except Exception:  # pylint: disable=broad-except  # the parent raises it, with this traceback
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def main() -> None:
    answers = os.fdopen(os.dup(1), "w")  # the protocol's own channel; fd 1 (print, C++ libraries) goes to stderr
    os.dup2(2, 1)
    serve(sys.stdin, answers)


if __name__ == "__main__":
    main()
