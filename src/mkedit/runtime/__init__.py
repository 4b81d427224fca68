"""Inference-time pieces: the edit cache, subject matching and the edited-model wrapper."""
