"""torch.compile of the FCN: symbolic shapes keep recompiles bounded over mixed sizes (counted), answers equal.

The "eager" backend runs dynamo's real tracing and guards, without inductor's code generation (minutes
on a loaded 2-core CPU); which graphs get compiled, and when, is the same."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from models import Category, Manifest, build_model, get_arch, make_predictor
from models.compiling import compiled_model
from models.parity import PARITY_QUERY, compare
from models.runtimes import twin


def test_mixed_sizes_and_batch_sizes_reuse_a_bounded_number_of_graphs() -> None:
    torch.manual_seed(0)
    spec = get_arch("segment", "fcn_small")
    manifest = Manifest(task="segment", arch=spec.name, num_classes=4, categories=[Category(1, "circle")],
                        input=dict(spec.input))  # fmt: skip
    predictor = make_predictor(build_model("segment", spec.name, num_classes=4), manifest)
    torch._dynamo.reset()
    counters.clear()
    fast = twin(predictor, compiled_model(predictor, backend="eager"))
    generator = torch.Generator().manual_seed(0)
    sizes = [(240, 320), (200, 300), (320, 240), (480, 352), (128, 160), (256, 512)]
    batches = [[torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator)] * n
               for n, (h, w) in zip([1, 2, 3, 2, 4, 1], sizes, strict=True)]  # fmt: skip
    for batch in batches:
        parity = compare(predictor.predict(batch, [PARITY_QUERY] * len(batch)),
                         fast.predict(batch, [PARITY_QUERY] * len(batch)))  # fmt: skip
        assert parity.ok, parity.problems
    graphs = counters["stats"]["unique_graphs"]
    # One graph for the first (static) shapes, one once dynamo marks them dynamic; six shapes need no more.
    assert 1 <= graphs <= 3, dict(counters["stats"])
    assert predictor.padding.forwards == len(batches)  # the twin counted its own forwards
