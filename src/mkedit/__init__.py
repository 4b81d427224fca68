"""mkedit: multilingual knowledge editing of LLMs with language-agnostic factual neurons (LU-LAFNs) and the
paper's baselines, all behind one edit protocol (``edit`` computes, ``applied`` puts edits in force)."""

from mkedit.facts import FactStore
from mkedit.methods.base import EditMethod
from mkedit.methods.lu_lafns import PRESETS, LuLafnConfig, LuLafnEditor, get_preset, preset_for
from mkedit.methods.registry import build_method, get_method, method_names, register_method
from mkedit.methods.view import EditedView, ModelView
from mkedit.models import LoadedModel, load_model
from mkedit.runtime.cache import Edit, EditCache
from mkedit.runtime.edited_model import Answer, EditedModel, ask
from mkedit.types import BenchmarkRecord, EditGroup, EditRequest, TestCase

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "Answer",
    "BenchmarkRecord",
    "Edit",
    "EditCache",
    "EditGroup",
    "EditMethod",
    "EditRequest",
    "EditedModel",
    "EditedView",
    "FactStore",
    "LoadedModel",
    "LuLafnConfig",
    "LuLafnEditor",
    "ModelView",
    "TestCase",
    "ask",
    "build_method",
    "get_method",
    "get_preset",
    "load_model",
    "method_names",
    "preset_for",
    "register_method",
]
