"""M-MEMIT: MEMIT's batched least-squares W_out update spread over a band of layers."""

from mkedit.methods.memit.config import MemitConfig
from mkedit.methods.memit.method import MemitMethod

__all__ = ["MemitConfig", "MemitMethod"]
