"""A small typed client for a densepred service, and the overlay renderer the service reuses.

Depends on httpx, numpy, Pillow and pycocotools only: never on torch, `models`, `service` or `trainer`.
"""

from client.api import TASKS, DensepredClient, DensepredError, Task

__all__ = ["TASKS", "DensepredClient", "DensepredError", "Task"]
