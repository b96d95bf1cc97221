"""Fixtures computed by the improved-diffusion and guided-diffusion code itself (see generate.py)."""
