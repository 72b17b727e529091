"""Steering: directions and hooks, persona vectors, steering sweeps."""
