"""Stability, Reproduced: the thin library behind the book.

Sub-packages are organised by field (``lib.ot``, ``lib.optim``, ...); ``lib.book`` holds the
machinery every chapter uses (seeds, claim checks, explorables, figure style, the build).
"""
