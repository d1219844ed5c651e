"""Materials: periodic toy crystals, structure matching and periodic generative models."""
