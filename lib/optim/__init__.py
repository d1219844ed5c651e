"""Optimization: first-order methods, finite-sum operators, fixed-point iterations."""
