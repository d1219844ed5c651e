"""Graphs: spectral positional encodings and small graph neural networks."""
