"""Zero bias buffers are left out of the matmuls (`components.bias.bias_to_add`), yet a value written
into one takes effect on the very next call, as TransformerLens' always-present biases do."""

from __future__ import annotations

import torch

import gated_interp as gi
from gated_interp.components.bias import bias_to_add


def test_a_zero_buffer_is_left_out_and_a_written_one_is_added():
    model = gi.load_hooked("gate_headwise", size="tiny", progress=False)
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 6), generator=torch.Generator().manual_seed(0))
    assert bias_to_add(model.unembed.b_U) is None and bias_to_add(model.blocks[1].mlp.b_out) is None
    with torch.no_grad():
        logits = model(tokens)
        _, cache = model.run_with_cache(tokens)

        model.unembed.b_U[5] = 2.0  # in place, as a user would
        shifted = model(tokens)
        assert bias_to_add(model.unembed.b_U) is model.unembed.b_U
        want = logits.clone()
        want[..., 5] += 2.0
        torch.testing.assert_close(shifted, want, rtol=0, atol=1e-5)

        model.blocks[1].mlp.b_out.fill_(0.5)
        _, again = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
        torch.testing.assert_close(again["blocks.1.hook_mlp_out"], cache["blocks.1.hook_mlp_out"] + 0.5)

        model.unembed.b_U.zero_()
        model.blocks[1].mlp.b_out.zero_()
        torch.testing.assert_close(model(tokens), logits, rtol=0, atol=0)
