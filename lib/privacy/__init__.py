"""Differential privacy: zero-concentrated DP accounting and the Gaussian mechanism."""
