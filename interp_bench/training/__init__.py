"""Training: the trainer, its checkpoints, distributed helpers."""
