"""tmafbench: a benchmark harness for trainable matrix activation functions (TMAF)."""

__version__ = "0.1.0"
