"""Each linear layer's Gram matrix of its inputs, ``G = XᵀX``, from forward hooks.

Which layers: every ``torch.nn.Linear`` of the model inside a transformer block whose weight is a
pool tensor (``q/k/v/o``, ``gate/up/down`` projections ...): :func:`linear_layers`. The paper
merges the linear layers of the transformer blocks and averages the rest (embeddings, norms and
the output head, tied or not).

``X`` holds the layer's input at every position the attention mask keeps (padding left out), of
every calibration example; the Gram is accumulated in float32 (float64 for a float64 model) and
divided by the number of positions (a factor common to every checkpoint on the same data, which
RegMean's solve cancels; it keeps the entries in the range of the inputs' squares). Pure
computation on a model and batches (:func:`search.calibration.batches`); which data, and caching,
are :mod:`.cache`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from search.engine.dtypes import work_dtype
from search.engine.layers import block_of


def linear_layers(
    model: torch.nn.Module, params: Mapping[str, torch.Tensor]
) -> dict[str, torch.nn.Linear]:
    """Pool tensor name -> the ``nn.Linear`` whose weight it is, for the layers inside the
    transformer blocks (``params``: pool tensor name -> the model's parameter,
    :func:`search.engine.materialize.model_parameters`)."""
    by_parameter = {id(p): name for name, p in params.items()}
    found = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            name = by_parameter.get(id(module.weight))
            if name is not None and block_of(name) is not None:
                found[name] = module
    return found


def gram_matrices(
    model: torch.nn.Module,
    layers: Mapping[str, torch.nn.Linear],
    examples: Iterable[tuple[Any, Any, Any]],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """The Gram matrix of each layer's inputs over ``examples``, divided by the positions seen.

    Args:
        model: the resident model, its weights those of the checkpoint measured.
        layers: tensor name -> its linear layer (:func:`linear_layers`).
        examples: ``(input_ids, attention_mask, labels)`` batches; masked positions are left out.
        on_batch: called with the number of examples of each batch done (a progress bar).

    Returns:
        tensor name -> ``[in, in]`` Gram, float32 (float64 for a float64 model), on the
        parameter's device.
    """
    sums = {
        name: torch.zeros(
            (layer.in_features, layer.in_features),
            dtype=work_dtype(layer.weight.dtype),
            device=layer.weight.device,
        )
        for name, layer in layers.items()
    }
    keep: list[torch.Tensor] = []  # the current batch's mask, flattened, as a bool

    def hook_for(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])
            if keep and keep[0].numel() == x.shape[0]:
                x = x[keep[0]]
            x = x.to(sums[name].dtype)
            sums[name].addmm_(x.T, x)

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(n)) for n, layer in layers.items()]
    positions = 0
    try:
        with torch.no_grad():
            for ids, mask, _ in examples:
                keep[:] = [mask.reshape(-1).bool()]
                positions += int(keep[0].sum())
                model(input_ids=ids, attention_mask=mask)
                if on_batch is not None:
                    on_batch(int(ids.shape[0]))
    finally:
        for handle in handles:
            handle.remove()
    if positions == 0:
        raise ValueError("gram_matrices: no positions to measure")
    return {name: s.div_(positions) for name, s in sums.items()}
