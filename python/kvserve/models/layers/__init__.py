"""Layers shared by the decoder models."""
