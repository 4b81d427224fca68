"""The locate-then-edit mechanism shared by M-ROME, M-MEMIT and M-PMET: keys, values, key statistics and
the weight-update rules, written once; the method packages pick a rule and its reference hyperparameters."""

from mkedit.methods.locate_edit.config import LocateEditConfig, depth_band
from mkedit.methods.locate_edit.method import GroupWork, LocateEditMethod
from mkedit.methods.locate_edit.stats import CORPUS_ENV, SecondMoments, StatsCorpusError

__all__ = [
    "CORPUS_ENV",
    "GroupWork",
    "LocateEditConfig",
    "LocateEditMethod",
    "SecondMoments",
    "StatsCorpusError",
    "depth_band",
]
