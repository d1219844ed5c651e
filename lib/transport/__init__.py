"""Neutron-transport iterations: discrete-ordinates slab sweeps and their acceleration."""
