"""mkedit: multilingual knowledge editing of LLMs with language-agnostic factual neurons (LU-LAFNs)."""

from mkedit.methods.lu_lafns import PRESETS, LuLafnConfig, LuLafnEditor, get_preset, preset_for
from mkedit.models import LoadedModel, load_model
from mkedit.runtime.cache import CachedEdit, EditCache
from mkedit.runtime.edited_model import Answer, EditedModel
from mkedit.types import BenchmarkRecord, EditGroup, EditRequest, TestCase

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Answer",
    "BenchmarkRecord",
    "CachedEdit",
    "EditCache",
    "EditGroup",
    "EditRequest",
    "EditedModel",
    "LoadedModel",
    "LuLafnConfig",
    "LuLafnEditor",
    "TestCase",
    "get_preset",
    "load_model",
    "preset_for",
]
