"""Shape grouping: padded batches waste little, every image runs exactly once, results do not change."""

from __future__ import annotations

from pathlib import Path

import torch

from models import Query, SemanticMap, load_predictor
from models.shape_groups import group_by_shape, padded_pixels, padding_waste


def test_landscape_and_portrait_images_run_in_separate_passes() -> None:
    shapes = [(256, 416), (416, 256), (256, 400), (400, 256), (256, 416)]
    groups = group_by_shape(shapes, divisor=32, max_waste=0.2)
    assert sorted(map(sorted, groups)) == [[0, 2, 4], [1, 3]]
    for group in groups:
        assert padding_waste([shapes[i] for i in group], 32) <= 0.2
    # One padded pass of all five would have computed mostly padding.
    assert padding_waste(shapes, 32) > 0.35


def test_every_image_is_in_exactly_one_group_and_waste_stays_within_the_tolerance() -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        count = int(torch.randint(1, 12, (), generator=generator))
        shapes = [(int(h), int(w)) for h, w in torch.randint(16, 700, (count, 2), generator=generator)]
        groups = group_by_shape(shapes, divisor=32, max_waste=0.25)
        assert sorted(i for group in groups for i in group) == list(range(count))
        for group in groups:
            members = [shapes[i] for i in group]
            # Within the tolerance, or (a group of one rounded up, or a join that is cheaper than the two
            # passes it replaced) no more pixels than running every member on its own.
            separate = sum(padded_pixels([shape], 32) for shape in members)
            assert padding_waste(members, 32) <= 0.25 or padded_pixels(members, 32) <= separate


def test_tolerance_extremes() -> None:
    shapes = [(100, 300), (300, 100), (200, 200)]
    assert len(group_by_shape(shapes, 32, max_waste=1.0)) == 1
    same = [(224, 224)] * 6
    assert group_by_shape(same, 32, max_waste=0.0) == [list(range(6))]


def test_grouped_batch_gives_each_image_the_result_it_gets_alone(random_store: Path) -> None:
    predictor = load_predictor(random_store, "segment")
    torch.manual_seed(0)
    images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in [(96, 320), (320, 96), (90, 300)]]
    before = predictor.padding.forwards
    together = predictor.predict(images, [Query()] * 3)
    assert predictor.padding.forwards - before == 2  # the portrait image runs on its own
    assert predictor.padding.waste < 0.2
    portrait_alone = predictor.predict([images[1]])[0]
    assert isinstance(together[1], SemanticMap)
    assert isinstance(portrait_alone, SemanticMap)
    assert torch.equal(together[1].labels, portrait_alone.labels)
