"""LU-LAFNs: locate language-agnostic factual neurons and learn one shared update for them."""

from mkedit.methods.lu_lafns.config import PRESETS, LuLafnConfig, get_preset, preset_for
from mkedit.methods.lu_lafns.editor import LuLafnEditor
from mkedit.methods.lu_lafns.locate import LocateResult
from mkedit.methods.lu_lafns.optimize import StepReport

__all__ = ["PRESETS", "LocateResult", "LuLafnConfig", "LuLafnEditor", "StepReport", "get_preset", "preset_for"]
