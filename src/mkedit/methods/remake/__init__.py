"""ReMaKE: retrieval-augmented multilingual knowledge editing (a baseline; weights are never changed)."""

from mkedit.methods.remake.config import ReMaKEConfig
from mkedit.methods.remake.method import ReMaKE

__all__ = ["ReMaKE", "ReMaKEConfig"]
