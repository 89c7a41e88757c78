"""Framework-neutral training: the loop, its objective, EMA, checkpoints, the launcher seam."""

from .loop import TrainingDiverged, build_components, training_loop

__all__ = ["TrainingDiverged", "build_components", "training_loop"]
