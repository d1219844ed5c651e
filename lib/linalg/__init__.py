"""Numerical linear algebra: low-rank matrix completion by (robust) alternating minimization."""
