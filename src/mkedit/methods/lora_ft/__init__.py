"""LoRA-FT: the fine-tuning baseline, LoRA adapters trained with PEFT and kept as low-rank weight deltas."""

from mkedit.methods.lora_ft.config import LoraFtConfig
from mkedit.methods.lora_ft.method import LoraFtMethod, PeftNotInstalledError

__all__ = ["LoraFtConfig", "LoraFtMethod", "PeftNotInstalledError"]
