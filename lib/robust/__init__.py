"""Robust optimisation: two-stage robust problems, exact baselines and learned value functions."""
