"""Random prefixes p^m of Eq. 8, sampled from the model itself in each language (seeded)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from mkedit.languages import get_language


@torch.no_grad()
def sample_prefixes(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, lang: str, count: int, length: int, seed: int
) -> list[str]:
    """``count`` prefixes: one of the language's seed words followed by ``length - 1`` tokens sampled
    (top-k 5) from the model, so the edit must hold after varied preceding text."""
    if count == 0:
        return []
    seeds = get_language(lang).prefix_seeds
    starts = [seeds[i % len(seeds)] for i in range(count)]
    device = next(model.parameters()).device
    batch = tokenizer(starts, return_tensors="pt", padding=True, padding_side="left")
    seed_len = batch["input_ids"].shape[1]
    new_tokens = max(1, length - 1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            top_k=5,
            pad_token_id=tokenizer.pad_token_id,
        )
    texts = tokenizer.batch_decode(out[:, seed_len:], skip_special_tokens=True)
    sep = get_language(lang).word_sep
    return [
        " ".join(f"{start}{sep}{text.strip()}".split()) if sep else f"{start}{text.strip()}"
        for start, text in zip(starts, texts, strict=True)
    ]
