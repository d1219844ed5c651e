"""Diffusion models and their evaluation: the miniature text-to-image testbed and its users."""
