"""Framework-neutral training: the loop, its objective, EMA, checkpoints, the launcher seam."""

from .kit import TrainingInterrupted
from .loop import TrainingDiverged, build_components, training_loop

__all__ = ["TrainingDiverged", "TrainingInterrupted", "build_components", "training_loop"]
