"""The detector: transform -> backbone + neck -> proposals -> decoder -> objective | postprocess.

Decoders: Sparse R-CNN (``model.architecture: sparse_rcnn``) or AdaMixer
(``adamixer``); either trains with either objective (``objective.name``).

Public API in the style of torchvision's detection models::

    model = build_detector(cfg)
    losses = model(images, targets)          # train mode: dict of per-stage losses
    detections = model(images)               # eval mode: [{"boxes", "scores", "labels"}]

``images`` is a list of ``Tensor[3, H, W]`` in 0..1; ``targets`` a list of
``{"boxes": Tensor[N, 4] xyxy pixels, "labels": Tensor[N] in 0..C-1}``. Labels in
the output are the same contiguous 0..C-1 indices.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from ..config import Config
from ..objectives import build_objective
from ..structures import StageOutput
from .adamixer import AdaMixerDecoder
from .backbone import build_backbone, fold_frozen_batchnorm
from .proposals import Proposals
from .sparse_rcnn import SparseRCNNDecoder, clean_boxes
from .transform import ImageTransform, boxes_to_original


class Detector(nn.Module):
    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m = cfg.model
        self.cfg = cfg
        self.head = "mixture" if cfg.objective.name == "drmm" else "box"
        self.transform = ImageTransform(
            m.min_size, m.max_size, m.pixel_mean, m.pixel_std, m.size_divisible, m.train_min_sizes, m.num_classes
        )
        self.backbone = build_backbone(m)
        self.proposals = Proposals(m.num_proposals, m.hidden_dim, m.proposal_init, m.proposal_size)
        if m.architecture == "sparse_rcnn":
            self.decoder = SparseRCNNDecoder(m, self.head)
        elif m.architecture == "adamixer":
            self.decoder = AdaMixerDecoder(m, self.head)
            self.proposals.boxes.weight.requires_grad_(False)  # AdaMixer's initial query boxes are not learned
        else:
            raise ValueError(f"unknown architecture {m.architecture!r}; available: 'sparse_rcnn', 'adamixer'")
        self.objective = build_objective(cfg.objective)
        self.detections_per_image = m.detections_per_image
        self.inference_only = False

    def optimize_for_inference(self, channels_last: bool = True, compile: bool = False) -> "Detector":
        """Eval mode, frozen BatchNorms folded into the convs, channels_last weights; for inference only.

        Same detections (to float rounding), about 20-30% less CPU time for the R50
        model (``docs/benchmarks.md``). ``compile`` also wraps the decoder in
        ``torch.compile`` (about 20 s to compile on 2 CPU cores, then ~14% faster;
        each new input size compiles again). The model can no longer train, and its
        ``state_dict`` no longer matches a checkpoint's, so save before, not after.
        """
        self.eval()
        fold_frozen_batchnorm(self.backbone.body)
        if channels_last:
            self.to(memory_format=torch.channels_last)
        if compile:
            self.decoder = torch.compile(self.decoder)
        self.inference_only = True
        return self

    def forward(
        self,
        images: list[Tensor],
        targets: list[dict[str, Tensor]] | None = None,
        return_stages: bool = False,
    ):
        """Losses (train) or detections (eval); with ``return_stages`` also every stage's outputs.

        Stage outputs are in the coordinates of the resized model input; see
        :meth:`mixture_parameters` to read them as probabilities.
        """
        if self.training and targets is None:
            raise ValueError("targets are required in training mode (call model.eval() for inference)")
        if self.training and self.inference_only:
            raise RuntimeError("this model was optimised for inference (optimize_for_inference) and cannot train")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        batch, sizes, targets = self.transform(images, targets)
        stages = self.decode(batch, sizes)
        if self.training:
            out = self.objective(stages, targets, sizes)
        else:
            out = self.postprocess(stages[-1], sizes, original_sizes)
        return (out, stages) if return_stages else out

    def decode(self, batch: Tensor, sizes: list[tuple[int, int]]) -> list[StageOutput]:
        """Backbone, proposals and all decoder stages on a prepared batch."""
        features = self.backbone(batch)
        boxes, feats = self.proposals(sizes)
        return self.decoder(features, boxes, feats, sizes)

    def scores(self, stage: StageOutput) -> Tensor:
        """``[B, K, C]`` confidence: ``p_k[c] * o_k`` (D-RMM) or sigmoid class scores (baseline)."""
        if self.head == "mixture":
            return stage.class_logits.float().softmax(-1) * stage.objectness_logit.float().sigmoid()[..., None]
        return stage.class_logits.float().sigmoid()

    def mixture_parameters(self, stage: StageOutput) -> dict[str, Tensor]:
        """mu, gamma, pi, objectness and class probabilities of one mixture stage."""
        from ..mixture import mixture_probabilities

        if self.head != "mixture":
            raise ValueError("mixture parameters exist only for the D-RMM head")
        return mixture_probabilities(
            stage.boxes, stage.raw_scale, stage.objectness_logit, stage.class_logits, self.cfg.objective.min_scale_ratio
        )

    def top_pairs(self, stage: StageOutput) -> tuple[Tensor, Tensor, Tensor]:
        """Top-``detections_per_image`` (component, class) pairs per image: ``(scores, k, c)``, each ``[B, top]``."""
        scores = self.scores(stage)
        B, K, C = scores.shape
        values, idx = scores.flatten(1).topk(min(self.detections_per_image, K * C), dim=1)
        return values, idx // C, idx % C

    @torch.no_grad()
    def postprocess(
        self, stage: StageOutput, sizes: list[tuple[int, int]], original_sizes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Top-``detections_per_image`` (component, class) pairs per image, no NMS."""
        values, comp, cls = self.top_pairs(stage)
        boxes = clean_boxes(stage.boxes.float(), sizes)
        return [
            {"boxes": boxes_to_original(boxes[i, comp[i]], sizes[i], original_sizes[i]),
             "scores": values[i], "labels": cls[i]}
            for i in range(len(sizes))
        ]


def build_detector(cfg: Config | None = None) -> Detector:
    """A :class:`Detector` from a :class:`~drmm.config.Config` (defaults: D-RMM Sparse R-CNN R50)."""
    return Detector(cfg or Config())


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a drmm checkpoint with ``weights_only=True`` and check its contents."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise RuntimeError(f"{path} is not a drmm checkpoint (needs 'model' and 'config' entries)")
    return ckpt


def detector_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Detector, dict]:
    """Rebuild the model saved in a checkpoint (config inside it); returns (model in eval mode, checkpoint)."""
    ckpt = load_checkpoint(path, map_location)
    cfg = Config.from_dict(ckpt["config"], f"{path}:config")
    cfg.model.pretrained = None  # the weights come from the checkpoint
    model = build_detector(cfg)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
