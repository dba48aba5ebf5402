"""mmbert: massively multilingual ModernBERT encoders trained with annealed language learning."""

__version__ = "0.1.0"
