"""The group-level update rules: which values are learned, and how they are written into W_out.

``rome_sequential``: one layer, one rank-one update per language, applied one after another (as the
reference ROME applies several requests): each language's value is learned and its update computed with
the previous languages' updates in force. ``spread_batched``: MEMIT and PMET learn every language's value
first, then write all of them into each layer at once (one key column per language), layer by layer,
recomputing keys and the remaining residual with the lower layers' updates in force.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from mkedit.methods.locate_edit.hooks import Site
from mkedit.methods.locate_edit.method import GroupWork
from mkedit.methods.locate_edit.updates import concat, rank_one, spread

Deltas = dict[int, tuple[torch.Tensor, torch.Tensor]]


def _in_force(deltas: Deltas) -> Deltas:
    """The factors as the simulation hooks take them (float32)."""
    return {layer: (left.float(), right.float()) for layer, (left, right) in deltas.items()}


def rome_sequential(work: GroupWork, layer: int) -> Deltas:
    """ROME on ``layer`` for each language in turn; the rank of the result is the number of languages."""
    total: tuple[torch.Tensor, torch.Tensor] | None = None
    for lang in work.langs:
        in_force = _in_force({layer: total}) if total is not None else {}
        value = work.value(lang, layer, ("ffn_out",), in_force)
        reading = work.read(lang, [layer], [("ffn_out", layer)], in_force)
        residual = value.target["ffn_out"] - reading.output[("ffn_out", layer)]
        update = rank_one(residual, reading.key_mean[layer], reading.key_bare[layer], work.moment(layer, [lang]))
        total = concat(total, update)
    assert total is not None
    return {layer: total}


def spread_batched(
    work: GroupWork,
    layers: Sequence[int],
    value_sites: Sequence[Site],
    target_site: Site,
    update_weight: float,
    share: Callable[[int], float],
) -> Deltas:
    """MEMIT's insertion over ``layers`` (ascending), with the value learned at the last of them.

    ``target_site`` is the value the residual is measured on (MEMIT: the block output; PMET: the FFN
    output); at the ``i``-th layer the residual is divided by ``share(remaining layers)`` (MEMIT: the
    count; PMET: its square root). ``C`` of a layer is the mean of the group's languages' moments.
    """
    z_layer = layers[-1]
    targets = torch.stack([work.value(lang, z_layer, value_sites).target[target_site] for lang in work.langs], 1)
    deltas: Deltas = {}
    for i, layer in enumerate(layers):
        readings = [work.read(lang, [layer], [(target_site, z_layer)], _in_force(deltas)) for lang in work.langs]
        keys = torch.stack([r.key_mean[layer] for r in readings], 1)  # [d_ffn, n]
        current = torch.stack([r.output[(target_site, z_layer)] for r in readings], 1)  # [d_model, n]
        residuals = (targets - current) / share(len(layers) - i)
        deltas[layer] = spread(residuals, keys, work.moment(layer, work.langs), update_weight)
    return deltas
