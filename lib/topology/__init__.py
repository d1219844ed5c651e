"""Topological data analysis: bifiltrations, multiparameter persistence and its vectorisations."""
