"""Small CPU-friendly architectures: a residual backbone, an FCN-8s and light R-CNNs on top of it.

The shapes task needs far less capacity than ResNet-50 offers; these models train from scratch in
minutes on two CPU cores and still use the same torchvision heads (RPN, RoIAlign, mask head) as the
big ones.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, roi_pool
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import LevelMapper, _setup_scales

DEFAULT_WIDTHS = (24, 48, 96, 192)
SKIPS = ("32s", "16s", "8s")
ROI_OPS = ("align", "pool")


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(channels, channels)
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.conv2(self.conv1(x)))


class TinyBackbone(nn.Sequential):
    """Residual conv net; its children `layer2..layer4` give features at strides 8, 16 and 32."""

    def __init__(self, widths: tuple[int, int, int, int] = DEFAULT_WIDTHS) -> None:
        w0, w1, w2, w3 = widths
        super().__init__(
            OrderedDict(
                stem=nn.Sequential(_conv_bn_relu(3, w0, 2), _conv_bn_relu(w0, w0, 2), ResidualBlock(w0)),
                layer2=nn.Sequential(_conv_bn_relu(w0, w1, 2), ResidualBlock(w1)),
                layer3=nn.Sequential(_conv_bn_relu(w1, w2, 2), ResidualBlock(w2)),
                layer4=nn.Sequential(_conv_bn_relu(w2, w3, 2), ResidualBlock(w3)),
            )
        )
        self.widths = widths


class SkipFCN(nn.Module):
    """FCN-8s: class scores from strides 32, 16 and 8, fused coarse-to-fine, upsampled to the input size.

    `skips` picks the variant of the FCN paper: "32s" (coarse only), "16s" or "8s" (both skips);
    `skip_width` the skips' scorers (see `_skip_scorer`).
    Returns `{"out": logits}` like torchvision's segmentation models, so one predictor serves both.
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, int, int, int] = DEFAULT_WIDTHS,
        skips: str = "8s",
        skip_width: int = 0,
    ) -> None:
        super().__init__()
        if skips not in SKIPS:
            raise ValueError(f"skips must be one of {', '.join(SKIPS)}, not {skips!r}")
        self.skips = skips
        self.backbone = TinyBackbone(widths)
        _, w1, w2, w3 = widths
        self.head32 = nn.Sequential(_conv_bn_relu(w3, w3), nn.Dropout2d(0.1), nn.Conv2d(w3, num_classes, 1))
        # Only the skips in use exist: DistributedDataParallel refuses parameters that get no gradient.
        if skips in ("16s", "8s"):
            self.score16 = _skip_scorer(w2, num_classes, skip_width)
        if skips == "8s":
            self.score8 = _skip_scorer(w1, num_classes, skip_width)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        size = x.shape[-2:]
        features = []
        for stage in self.backbone:
            x = stage(x)
            features.append(x)
        _, c3, c4, c5 = features
        logits = self.head32(c5)
        if self.skips in ("16s", "8s"):
            logits = _upsample_to(logits, c4) + self.score16(c4)
        if self.skips == "8s":
            logits = _upsample_to(logits, c3) + self.score8(c3)
        # In fp32 NCHW whatever the runtime: NHWC bilinear kernels vectorise over channels, and with one channel
        # per class the full-size upsampling under bf16 + NHWC took 82 ms of a 293 ms profile (30 in NCHW).
        logits = logits.float().contiguous()
        return {"out": F.interpolate(logits, size=size, mode="bilinear", align_corners=False)}


def _skip_scorer(channels: int, num_classes: int, width: int) -> nn.Module:
    """The FCN paper's 1x1 scorer (width 0), or a 3x3 conv block first.

    A 1x1 conv on a shallow stage sees only that stage's small receptive field; the 3x3 block lets the
    fine skips tell a square's corner from a circle's rim where the coarse scores are too blurred.
    """
    if width == 0:
        return nn.Conv2d(channels, num_classes, 1)
    return nn.Sequential(_conv_bn_relu(channels, width), nn.Conv2d(width, num_classes, 1))


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def tiny_fpn_backbone(
    widths: tuple[int, int, int, int] = DEFAULT_WIDTHS, out_channels: int = 64, norm: bool = False
) -> BackboneWithFPN:
    return BackboneWithFPN(
        TinyBackbone(widths),
        return_layers={"layer2": "0", "layer3": "1", "layer4": "2"},
        in_channels_list=list(widths[1:]),
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=_norm_layer(norm),
    )


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """RoI max pooling (Fast R-CNN) on FPN levels, each box on the level MultiScaleRoIAlign would pick.

    The `roi_op="pool"` ablation of the Mask R-CNN paper: coordinates snap to the feature grid and bins
    are max-pooled, where RoIAlign samples bilinearly at exact positions. No parameters: the state dict
    is the same for both ops.
    """

    scales: list[float] | None
    map_levels: LevelMapper | None

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if self.scales is None or self.map_levels is None:
            # torchvision's own scale inference and FPN-paper level mapper (eq. 1), as MultiScaleRoIAlign uses.
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)])
        levels = self.map_levels(boxes)
        pooled = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            index = torch.where(levels == level)[0]
            pooled[index] = roi_pool(feature, rois[index], self.output_size, scale).to(pooled.dtype)
        return pooled


def _roi_pooler(roi_op: str, output_size: int) -> MultiScaleRoIAlign:
    if roi_op not in ROI_OPS:
        raise ValueError(f"roi_op must be one of {', '.join(ROI_OPS)}, not {roi_op!r}")
    if roi_op == "pool":
        return MultiScaleRoIPool(["0", "1", "2"], output_size=output_size, sampling_ratio=0)
    return MultiScaleRoIAlign(["0", "1", "2"], output_size=output_size, sampling_ratio=2)


def _norm_layer(norm: bool) -> type[nn.BatchNorm2d] | None:
    return nn.BatchNorm2d if norm else None


def _box_head(out_channels: int, representation: int, norm: bool) -> nn.Module:
    """Two fully connected layers (Faster R-CNN), or with `norm` two BatchNorm'd 3x3 convs before one
    (torchvision's v2 recipe, which "Rethinking ImageNet Pre-training" found needed to train from scratch)."""
    if not norm:
        return TwoMLPHead(out_channels * 7 * 7, representation)
    return FastRCNNConvFCHead((out_channels, 7, 7), [out_channels] * 2, [representation], norm_layer=nn.BatchNorm2d)


def _small_rcnn_parts(out_channels: int, num_classes: int, roi_op: str, norm: bool) -> dict[str, Any]:
    # Strides 8/16/32/64 with two sizes each cover shapes from ~20 px to the whole image.
    anchors = AnchorGenerator(sizes=((16, 24), (32, 48), (64, 96), (128, 192)), aspect_ratios=((0.5, 1.0, 2.0),) * 4)
    representation = 256
    return {
        "rpn_anchor_generator": anchors,
        "box_roi_pool": _roi_pooler(roi_op, 7),
        "box_head": _box_head(out_channels, representation, norm),
        "box_predictor": FastRCNNPredictor(representation, num_classes),
        # Training samples 300 proposals and 128 RoIs per image (torchvision: 2000 and 512). Halving both
        # made Mask R-CNN steps 2.3x faster but learn less per step: with the same steps, the quick chain's
        # Mask R-CNN reached mask mAP@0.5 0.86 with halved counts and 0.92 with these (one GPU run each,
        # bench/results/accuracy_experiments.md).
        "rpn_pre_nms_top_n_train": 600,
        "rpn_post_nms_top_n_train": 300,
        "rpn_pre_nms_top_n_test": 300,
        "rpn_post_nms_top_n_test": 100,
        "box_batch_size_per_image": 128,
    }


def small_faster_rcnn(
    num_classes: int, out_channels: int = 64, roi_op: str = "align", norm: bool = False, **kwargs: Any
) -> FasterRCNN:
    """`roi_op` picks how box features are cropped: "align" (RoIAlign) or "pool" (RoI max pooling);
    `norm` puts BatchNorm in the FPN and the heads (entries without it load as before)."""
    parts = _small_rcnn_parts(out_channels, num_classes, roi_op, norm)
    return FasterRCNN(tiny_fpn_backbone(out_channels=out_channels, norm=norm), num_classes=None, **parts, **kwargs)


def small_mask_rcnn(
    num_classes: int, out_channels: int = 64, roi_op: str = "align", norm: bool = False, **kwargs: Any
) -> MaskRCNN:
    """`roi_op` and `norm` as for small_faster_rcnn, for the box and the mask head."""
    parts = _small_rcnn_parts(out_channels, num_classes, roi_op, norm)
    mask_width = 64
    return MaskRCNN(
        tiny_fpn_backbone(out_channels=out_channels, norm=norm),
        num_classes=None,
        mask_roi_pool=_roi_pooler(roi_op, 14),
        mask_head=MaskRCNNHeads(out_channels, (mask_width,) * 4, dilation=1, norm_layer=_norm_layer(norm)),
        mask_predictor=MaskRCNNPredictor(mask_width, mask_width, num_classes),
        **parts,
        **kwargs,
    )


@torch.no_grad()
def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
