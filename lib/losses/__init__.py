"""Surrogate loss functions for classification and their consistency guarantees."""
