"""M-PMET: PMET's update — attention and FFN values learned together, W_out updated with the FFN part only."""

from mkedit.methods.pmet.config import PmetConfig
from mkedit.methods.pmet.method import PmetMethod

__all__ = ["PmetConfig", "PmetMethod"]
