"""The detector: transform -> backbone + neck -> proposals -> decoder -> objective | post-processing.

Public API in the style of torchvision's detection models::

    model = build_detector(cfg)
    losses = model(images, targets)          # train mode: dict of per-stage losses
    detections = model(images)               # eval mode: [{"boxes", "scores", "labels"}]
    detections, trace = model(images, return_stages=True)   # + every stage's outputs

``images`` is a list of ``Tensor[3, H, W]`` in 0..1; ``targets`` a list of
``{"boxes": Tensor[N, 4] xyxy pixels, "labels": Tensor[N] in 0..C-1}``. Labels in
the output are the same contiguous 0..C-1 indices. The modules are built from a
config by :func:`drmm.models.build.build_detector`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..structures import ForwardTrace, StageOutput
from .backbone import fold_batchnorm
from .heads import MixtureHead


class Detector(nn.Module):
    """The modules of a detector in the order data flows through them.

    ``config`` is kept only to be saved with checkpoints; nothing here reads it.
    """

    def __init__(self, transform: nn.Module, backbone: nn.Module, proposals: nn.Module, decoder: nn.Module,
                 objective: nn.Module, postprocess: nn.Module, config=None) -> None:
        super().__init__()
        self.cfg = config
        self.transform = transform
        self.backbone = backbone
        self.proposals = proposals
        self.decoder = decoder
        self.objective = objective
        self.postprocess = postprocess
        self.inference_only = False

    @property
    def head(self) -> nn.Module:
        """The last stage's head: it turns stage outputs into confidences (and mixture parameters)."""
        return self.decoder.stages[-1].head

    @property
    def is_mixture(self) -> bool:
        """True for D-RMM's mixture head (mixture parameters, NLL / MCM diagnostics exist)."""
        return isinstance(self.head, MixtureHead)

    def optimize_for_inference(self, channels_last: bool = True, compile: bool = False) -> "Detector":
        """Eval mode, the backbone's BatchNorms folded into the convs, channels_last weights; for inference only.

        Same detections (to float rounding), about 20-30% less CPU time for the R50
        model (``docs/benchmarks.md``). ``compile`` also wraps the decoder in
        ``torch.compile`` (about 20 s to compile on 2 CPU cores, then ~14% faster;
        each new input size compiles again). The model can no longer train, and its
        ``state_dict`` no longer matches a checkpoint's, so save before, not after.
        """
        self.eval()
        fold_batchnorm(self.backbone.body)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.decoder = torch.compile(self.decoder)
        self.inference_only = True
        return self

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                return_stages: bool = False):
        """Losses (train) or detections (eval); with ``return_stages`` also a :class:`ForwardTrace`.

        In eval mode ``targets`` are optional; when given they are resized with the
        images and returned in the trace (for validation losses on model inputs).
        """
        if self.training and targets is None:
            raise ValueError("targets are required in training mode (call model.eval() for inference)")
        if self.training and self.inference_only:
            raise RuntimeError("this model was optimised for inference (optimize_for_inference) and cannot train")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        stages = self.decode(batch, sizes)
        components = None
        if self.training:
            out = self.objective(stages, targets, sizes)
        else:
            out, components = self.postprocess(self.head.scores(stages[-1]), stages[-1].boxes, sizes, original_sizes)
        return (out, ForwardTrace(stages, sizes, targets, components)) if return_stages else out

    def decode(self, batch: Tensor, sizes: list[tuple[int, int]]) -> list[StageOutput]:
        """Backbone, proposals and all decoder stages on a prepared batch."""
        features = self.backbone(batch)
        boxes, feats = self.proposals(sizes)
        return self.decoder(features, boxes, feats, sizes)

    def scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` confidence of every (component, class) pair: ``p_k[c] * o_k`` for D-RMM."""
        return self.head.scores(stage)

    def mixture_parameters(self, stage: StageOutput) -> dict[str, Tensor]:
        """mu, gamma, pi, objectness and class probabilities of one mixture stage."""
        if not self.is_mixture:
            raise ValueError("mixture parameters exist only for the D-RMM head (objective.name: drmm)")
        return self.head.mixture_parameters(stage)
