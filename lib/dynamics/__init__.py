"""Training dynamics: models of how features and weights evolve during training."""
