"""The two runs every patching method starts from: the clean run, cached at a few hooks, and the
corrupted run with the metric's gradients at a few hooks (attribution patching and AtP*)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from gated_interp.cache import CacheLike
from gated_interp.masks import Mask
from gated_interp.model import HookedGatedQwen3, ModelInput
from gated_interp.patching.metrics import Metric, metric_scalar


def token_batch(
    model: HookedGatedQwen3,
    tokens: ModelInput,
    attention_mask: Mask[Tensor, "batch pos"] | None = None,
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"] | None]:
    """The tokens and attention mask a sweep runs with, resolved as the model's forward resolves
    them: strings are tokenised (their padding masked), one prompt (`[pos]`) becomes a batch of
    one, and left-padded tokens without a mask (`cfg.default_padding_side="left"`) get the mask
    derived from their leading pads. Every run of a sweep then uses this one mask, including the
    runs that start at a later layer and never see the tokens."""
    return model._as_tokens(tokens, attention_mask, None)


@torch.no_grad()
def clean_run(
    model: HookedGatedQwen3,
    tokens: Int[Tensor, "batch pos"],
    names: Collection[str],
    attention_mask: Mask[Tensor, "batch pos"] | None,
) -> tuple[Tensor, CacheLike]:
    """The clean logits and the cache of the hooks `names` (full hook names) only."""
    return model.run_with_cache(tokens, attention_mask=attention_mask, names_filter=lambda name: name in names)


def corrupted_with_grads(
    model: HookedGatedQwen3,
    tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    names: Sequence[str],
    attention_mask: Mask[Tensor, "batch pos"] | None,
    grad_names: Sequence[str] | None = None,
    extra_hooks: Sequence[tuple[str, Callable]] = (),
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The corrupted activations at the hooks `names` and d metric / d activation at `grad_names`
    (default: all of `names`), from one forward and one backward, keyed by hook name.

    `extra_hooks` run after the ones that keep activations (AtP*'s GradDrop blocks the backward
    pass at a block's outputs with them). A gradient that does not reach a hook is zeros.
    """
    grad_names = list(names if grad_names is None else grad_names)
    acts: dict[str, Tensor] = {}

    def as_leaf(embed: Tensor, hook: object) -> Tensor:
        # Grads flow from here, whether or not the weights require grad (frozen models too); the
        # weights' own .grad is never touched because only activation grads are asked for.
        return embed.detach().requires_grad_(True)

    def keep(act: Tensor, hook: object) -> None:
        acts[hook.name] = act

    hooks = [("hook_embed", as_leaf)] + [(name, keep) for name in names] + list(extra_hooks)
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, attention_mask=attention_mask, fwd_hooks=hooks)
        value = metric_scalar(metric(logits))
        if not value.requires_grad:
            raise ValueError("the metric's value does not depend on the logits through autograd (was it detached?)")
        found = torch.autograd.grad(value, [acts[n] for n in grad_names], allow_unused=True)
    grads = {n: torch.zeros_like(acts[n]) if g is None else g for n, g in zip(grad_names, found)}
    return {n: a.detach() for n, a in acts.items()}, grads
