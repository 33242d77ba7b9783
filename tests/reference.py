"""Independent plain-PyTorch reference forward pass for gated Qwen3 checkpoints.

Written directly from the released Hugging Face checkpoint format description
(not from the project's model code) so tests can cross-check the real model.
Everything is computed in float32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def tiny_config(**overrides) -> dict:
    """A small valid Qwen3-style config dict; any key may be overridden."""
    cfg = {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 96,
        "vocab_size": 101,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "headwise_attn_output_gate": False,
        "elementwise_attn_output_gate": False,
        "use_qk_norm": True,
        "qkv_bias": False,
        "max_position_embeddings": 512,
    }
    cfg.update(overrides)
    return cfg


def _dims(config: dict):
    d = config["hidden_size"]
    h = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or h
    hd = config.get("head_dim") or d // h
    headwise = bool(config.get("headwise_attn_output_gate", False))
    elementwise = bool(config.get("elementwise_attn_output_gate", False))
    assert not (headwise and elementwise), "at most one gate kind"
    gate_per_head = 1 if headwise else (hd if elementwise else 0)
    return d, h, kv, hd, gate_per_head


def _rope_theta(config: dict) -> float:
    if config.get("rope_theta") is not None:
        return float(config["rope_theta"])
    rp = config.get("rope_parameters") or {}
    if rp.get("rope_theta") is not None:
        return float(rp["rope_theta"])
    return 1e6


def _rope_factor(config: dict) -> float:
    rs = config.get("rope_scaling")
    if not rs:
        return 1.0
    kind = rs.get("rope_type", rs.get("type", "default"))
    if kind == "default":
        return 1.0
    if kind == "linear":
        return float(rs["factor"])
    raise NotImplementedError(f"rope scaling {kind!r} not supported by reference")


def random_released_checkpoint(config: dict, seed: int = 0, dtype=torch.float32) -> dict:
    """Random weights in the released HF format for `config`."""
    d, h, kv, hd, g = _dims(config)
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    bias = bool(config.get("qkv_bias", False))
    qk_norm = config.get("use_qk_norm", True)
    gen = torch.Generator().manual_seed(seed)

    def mat(*shape, std=0.02):
        return torch.randn(*shape, generator=gen) * std

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=gen)

    sd = {"model.embed_tokens.weight": mat(vocab, d, std=0.5)}
    q_width = h * hd + h * g
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = norm(d)
        sd[p + "post_attention_layernorm.weight"] = norm(d)
        shapes = {"q_proj": (q_width, d), "k_proj": (kv * hd, d), "v_proj": (kv * hd, d), "o_proj": (d, h * hd)}
        for name, shape in shapes.items():
            sd[p + f"self_attn.{name}.weight"] = mat(*shape, std=0.1)
            if bias:
                sd[p + f"self_attn.{name}.bias"] = mat(shape[0], std=0.05)
        if qk_norm:
            sd[p + "self_attn.q_norm.weight"] = norm(hd)
            sd[p + "self_attn.k_norm.weight"] = norm(hd)
        sd[p + "mlp.gate_proj.weight"] = mat(inter, d, std=0.1)
        sd[p + "mlp.up_proj.weight"] = mat(inter, d, std=0.1)
        sd[p + "mlp.down_proj.weight"] = mat(d, inter, std=0.1)
    sd["model.norm.weight"] = norm(d)
    if not config.get("tie_word_embeddings", False):
        sd["lm_head.weight"] = mat(vocab, d, std=0.1)
    return {k: v.to(dtype) for k, v in sd.items()}


def _rms_norm(x, weight, eps):
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight.float() * x32.to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def _linear(x, sd, key):
    b = sd.get(key + ".bias")
    return F.linear(x, sd[key + ".weight"].float(), None if b is None else b.float())


@torch.no_grad()
def reference_activations(
    config: dict, state_dict: dict, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> dict:
    """Forward pass returning per-layer activations and logits (float32).

    Keys: "blocks.{i}.q" [b,p,h,d] (raw q_proj queries, pre q_norm),
    "blocks.{i}.gate_logits" [b,p,h,1|d] (absent when no gate),
    "blocks.{i}.z_pre_gate" [b,p,h,d], "blocks.{i}.z" [b,p,h,d] (gated),
    "blocks.{i}.pattern" [b,h,q,k], "blocks.{i}.resid_post" [b,p,d_model],
    and "logits" [b,p,vocab]. Also available as acts["layers"][i][name].
    """
    sd = state_dict
    d, h, kv, hd, g = _dims(config)
    eps = config["rms_norm_eps"]
    qk_norm = config.get("use_qk_norm", True)
    n_rep = h // kv
    B, P = input_ids.shape

    if attention_mask is None:
        attention_mask = torch.ones(B, P, dtype=torch.long)
    mask = attention_mask.to(torch.long)
    pos_ids = (mask.cumsum(-1) - 1).clamp(min=0)

    # Rotary tables [B, P, hd]
    inv_freq = 1.0 / (_rope_theta(config) ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    t = pos_ids.float() / _rope_factor(config)
    freqs = t[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    cos, sin = emb.cos()[:, :, None, :], emb.sin()[:, :, None, :]  # [B,P,1,hd]

    # Allowed[b, q, k]: causal and key is real; padded queries attend to themselves.
    causal = torch.ones(P, P, dtype=torch.bool).tril()
    allowed = causal[None] & mask.bool()[:, None, :]
    allowed = allowed | torch.eye(P, dtype=torch.bool)[None]
    allowed = allowed[:, None]  # [B,1,q,k]

    x = sd["model.embed_tokens.weight"].float()[input_ids]
    acts = {"layers": []}
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        L = {}
        a_in = _rms_norm(x, sd[p + "input_layernorm.weight"], eps)

        q_raw = _linear(a_in, sd, p + "self_attn.q_proj")
        grouped = q_raw.view(B, P, kv, n_rep * hd + n_rep * g)
        q = grouped[..., : n_rep * hd].reshape(B, P, h, hd)
        L["q"] = q
        gate_logits = None
        if g:
            gate_logits = grouped[..., n_rep * hd :].reshape(B, P, h, g)
            L["gate_logits"] = gate_logits

        k = _linear(a_in, sd, p + "self_attn.k_proj").view(B, P, kv, hd)
        v = _linear(a_in, sd, p + "self_attn.v_proj").view(B, P, kv, hd)
        if qk_norm:
            q = _rms_norm(q, sd[p + "self_attn.q_norm.weight"], eps)
            k = _rms_norm(k, sd[p + "self_attn.k_norm.weight"], eps)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin

        # GQA: query head j uses kv head j // n_rep
        k = k.repeat_interleave(n_rep, dim=2)
        v = v.repeat_interleave(n_rep, dim=2)
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed, float("-inf"))
        pattern = scores.softmax(dim=-1)
        L["pattern"] = pattern
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        L["z_pre_gate"] = z
        if gate_logits is not None:
            z = z * torch.sigmoid(gate_logits)
        L["z"] = z
        x = x + _linear(z.reshape(B, P, h * hd), sd, p + "self_attn.o_proj")

        m_in = _rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        gate = _linear(m_in, sd, p + "mlp.gate_proj")
        up = _linear(m_in, sd, p + "mlp.up_proj")
        x = x + _linear(F.silu(gate) * up, sd, p + "mlp.down_proj")
        L["resid_post"] = x

        acts["layers"].append(L)
        for name, val in L.items():
            acts[f"blocks.{i}.{name}"] = val

    x = _rms_norm(x, sd["model.norm.weight"], eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    acts["logits"] = F.linear(x, head.float())
    return acts


def reference_logits(
    config: dict, state_dict: dict, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Logits [batch, pos, vocab] in float32."""
    return reference_activations(config, state_dict, input_ids, attention_mask)["logits"]
