"""overparam: how much of an over-parameterised network is actually used."""

__version__ = "0.1.0"
