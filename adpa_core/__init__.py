"""ADPA Lab core library: preference distillation (DCKD, ADPA, ADPA+) for small language models."""

__version__ = "0.1.0"
