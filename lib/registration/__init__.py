"""Deformable image registration: displacement fields, warps and their Jacobians, synthetic
organ/tumour phantoms, similarity-driven and volume-preserving registration, overlap metrics."""
