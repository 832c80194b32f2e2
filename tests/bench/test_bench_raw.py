"""bench/raw.py, the limit every server is measured against, on tiny untrained models."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import raw  # noqa: E402
from harness import images, random_store  # noqa: E402


def test_the_limit_is_the_best_of_its_ways_and_leaves_torch_as_it_found_it(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    limit = raw.measure(random_store(tmp_path), "segment", images(4, seed=0), [1, 2], 0.05, workers=2)
    one, two = limit["batches"]
    assert "parallel_workers" not in one  # a batch of one is a latency figure: it runs one way
    ways = {name: way for name, way in two.items() if isinstance(way, dict)}
    assert set(ways) == {"main_thread", "worker_thread", "parallel_workers"}
    assert two["images_per_s"] == max(way["images_per_s"] for way in ways.values())
    side_by_side = ways["parallel_workers"]
    assert side_by_side["workers"] == 2
    assert side_by_side["torch_threads_each"] == max(1, threads // 2)
    assert side_by_side["images"] >= 2 * 4  # each thread went round the images at least once
    # The side-by-side threads set torch's process-wide default; a thread started later must get it back.
    later: list[int] = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert later == [threads]
