"""M-ROME: ROME's rank-one W_out update on one layer, once per language of a group."""

from mkedit.methods.rome.config import RomeConfig
from mkedit.methods.rome.method import RomeMethod

__all__ = ["RomeConfig", "RomeMethod"]
