"""Conversions to and from Hugging Face / mamba-ssm formats, one module per family."""
