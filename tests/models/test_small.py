"""The small architectures' ablation options: `roi_op` for the R-CNNs, `skips` for the FCN."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from models import Category, Manifest, build_model, get_arch, load_predictor, save_entry
from models.small import MultiScaleRoIPool, SkipFCN


def _features() -> OrderedDict[str, torch.Tensor]:
    torch.manual_seed(0)
    return OrderedDict((name, torch.randn(2, 4, 64 // 2**i, 64 // 2**i)) for i, name in enumerate(["0", "1", "2"]))


def test_roi_pooling_uses_roialigns_level_for_each_box() -> None:
    features = _features()
    # Small, large and medium boxes land on different FPN levels (strides 8, 16, 32 of a 512 px image).
    boxes = [torch.tensor([[10.0, 10, 40, 40], [0, 0, 500, 500]]), torch.tensor([[50.0, 60, 350, 360]])]
    pool = MultiScaleRoIPool(["0", "1", "2"], output_size=7, sampling_ratio=0)
    align = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    pooled = pool(features, boxes, [(512, 512), (512, 512)])
    assert pooled.shape == align(features, boxes, [(512, 512), (512, 512)]).shape == (3, 4, 7, 7)
    assert pool.map_levels is not None
    assert pool.scales is not None
    levels = pool.map_levels(boxes).tolist()
    assert levels == [0, 2, 1]
    rois = [(0, boxes[0][0]), (0, boxes[0][1]), (1, boxes[1][0])]
    for i, ((image, box), level) in enumerate(zip(rois, levels, strict=True)):
        feature = features[str(level)]
        roi = torch.cat([torch.tensor([float(image)]), box])[None]
        assert torch.equal(pooled[i], roi_pool(feature, roi, 7, pool.scales[level])[0])


@pytest.mark.parametrize("task", ["detect", "instances"])
def test_rcnn_with_roi_pooling_trains_and_keeps_the_same_weights(task: str) -> None:
    arch = get_arch(task, "fasterrcnn_small" if task == "detect" else "maskrcnn_small")
    pooled = arch.build(3, roi_op="pool")
    assert pooled.state_dict().keys() == arch.build(3).state_dict().keys()  # the op has no parameters
    assert isinstance(pooled.roi_heads.box_roi_pool, MultiScaleRoIPool)
    mask = torch.zeros(1, 120, 160, dtype=torch.uint8)
    mask[:, 20:60, 30:90] = 1
    target = {"boxes": torch.tensor([[30.0, 20, 90, 60]]), "labels": torch.tensor([1]), "masks": mask}
    losses = pooled([torch.rand(3, 120, 160)], [target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize(("skips", "heads"), [("32s", set()), ("16s", {"score16"}), ("8s", {"score16", "score8"})])
def test_fcn_variants_have_only_the_skip_heads_they_use(skips: str, heads: set[str]) -> None:
    model = SkipFCN(num_classes=3, skips=skips)
    assert {name for name, _ in model.named_children()} == {"backbone", "head32"} | heads
    model(torch.rand(2, 3, 64, 96))["out"].sum().backward()
    # Every parameter gets a gradient, as DistributedDataParallel requires.
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("skip_width", [0, 16])
def test_fcn_skip_scorers_are_1x1_or_a_conv_block(skip_width: int) -> None:
    model = SkipFCN(num_classes=3, skip_width=skip_width)
    assert isinstance(model.score8, torch.nn.Conv2d) == (skip_width == 0)
    assert model(torch.rand(1, 3, 64, 96))["out"].shape == (1, 3, 64, 96)


def test_fcn_entries_without_a_recorded_skip_width_build_the_1x1_scorers() -> None:
    # Entries trained before skip_width existed record no such option; they must still load.
    plain = build_model("segment", "fcn_small", 4)
    assert isinstance(plain.score8, torch.nn.Conv2d)
    new = build_model("segment", "fcn_small", 4, **get_arch("segment", "fcn_small").with_choices())
    assert isinstance(new.score8, torch.nn.Sequential)


def test_options_an_architecture_lacks_are_refused() -> None:
    assert get_arch("segment", "fcn_small").with_choices(skips="16s") == {"skips": "16s", "skip_width": 64}
    with pytest.raises(ValueError, match="skips must be one of 32s, 16s, 8s, not '4s'"):
        get_arch("segment", "fcn_small").with_choices(skips="4s")
    with pytest.raises(ValueError, match="fasterrcnn_resnet50_fpn has no option 'roi_op' \\(its options: none\\)"):
        get_arch("detect", "fasterrcnn_resnet50_fpn").with_choices(roi_op="pool")
    with pytest.raises(ValueError, match="fcn_small has no option 'roi_op' \\(its options: skips\\)"):
        get_arch("segment", "fcn_small").with_choices(roi_op="pool")


def test_recorded_options_rebuild_the_same_network(tmp_path: Path) -> None:
    spec = get_arch("detect", "fasterrcnn_small")
    options = spec.with_choices(roi_op="pool")
    model = build_model("detect", spec.name, 4, **options)
    manifest = Manifest(task="detect", arch=spec.name, num_classes=4, categories=[Category(1, "a")],
                        input=dict(spec.input), options=options)  # fmt: skip
    save_entry(tmp_path, manifest, model.state_dict())
    assert isinstance(load_predictor(tmp_path, "detect").model.roi_heads.box_roi_pool, MultiScaleRoIPool)


@pytest.mark.parametrize("task", ["detect", "instances"])
def test_rcnn_norm_option_puts_batch_norm_in_the_fpn_and_heads_and_reloads(task: str, tmp_path: Path) -> None:
    spec = get_arch(task, "fasterrcnn_small" if task == "detect" else "maskrcnn_small")
    options = spec.with_choices(norm=True)
    model = build_model(task, spec.name, 4, **options)
    plain = spec.build(4)
    norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    plain_norms = {n for n, m in plain.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    added = {name.split(".")[0] + "." + name.split(".")[1] for name in norms - plain_norms}
    expected = {"backbone.fpn", "roi_heads.box_head"} | ({"roi_heads.mask_head"} if task == "instances" else set())
    assert added == expected
    mask = torch.zeros(1, 120, 160, dtype=torch.uint8)
    mask[:, 20:60, 30:90] = 1
    target = {"boxes": torch.tensor([[30.0, 20, 90, 60]]), "labels": torch.tensor([1]), "masks": mask}
    losses = model([torch.rand(3, 120, 160), torch.rand(3, 120, 160)], [target, target])
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    manifest = Manifest(task=task, arch=spec.name, num_classes=4, categories=[Category(1, "a")],
                        input=dict(spec.input), options=options)  # fmt: skip
    save_entry(tmp_path, manifest, model.state_dict())
    loaded = load_predictor(tmp_path, task).model
    assert loaded.state_dict().keys() == model.state_dict().keys() != plain.state_dict().keys()
