"""Measure the hardware (collectives, p2p, overlap) and the model (per-layer time and memory) for the search."""
