"""Offline trainer: synthetic shapes dataset, COCO datasets, train/eval loops and export to the model store."""
