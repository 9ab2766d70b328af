"""cnnbench: summaries, training runs, speed figures and receptive fields for classic CNNs."""

__version__ = "0.1.0"
