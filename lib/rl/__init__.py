"""Reinforcement learning in small tabular models: latent MDPs, exact history planning,
optimistic model-based learners."""
