"""drifting-platform: train, sweep and ablate Drifting Models (Deng et al., 2026)."""

__version__ = "0.1.0"
