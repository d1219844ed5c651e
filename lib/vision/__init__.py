"""Geometric vision: event-camera simulation, eventail line/velocity solvers, robust fitting."""
