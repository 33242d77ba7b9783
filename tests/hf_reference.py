"""Hugging Face `Qwen3ForCausalLM` built from a released-format config and state dict: the
independent reference for ungated models, shared by the tests that compare against it."""

import transformers


def hf_qwen3(cfg: dict, sd: dict) -> transformers.Qwen3ForCausalLM:
    """HF Qwen3 with the same weights; eager attention, so that attention weights are returned."""
    rope = {"rope_type": "default", "rope_theta": cfg["rope_theta"]}
    if cfg.get("rope_scaling"):
        rope = {"rope_type": "linear", "factor": cfg["rope_scaling"]["factor"], "rope_theta": cfg["rope_theta"]}
    hf_cfg = transformers.Qwen3Config(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"],
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_parameters=rope,
        attention_bias=cfg["qkv_bias"],
        tie_word_embeddings=cfg["tie_word_embeddings"],
        max_position_embeddings=512,
    )
    hf_cfg._attn_implementation = "eager"
    model = transformers.Qwen3ForCausalLM(hf_cfg).eval()
    full = dict(sd)
    if cfg["tie_word_embeddings"]:
        full["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(full, strict=True)
    if cfg["tie_word_embeddings"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    return model
