"""The model's configuration, in TransformerLens' vocabulary.

Field names follow `transformer_lens.HookedTransformerConfig` where one exists (`d_model`, `n_heads`,
`n_key_value_heads`, `d_head`, `d_mlp`, `d_vocab`, `normalization_type`, ...), because
`ActivationCache` and `transformer_lens.patching` read them. Conversion to and from the Hugging Face
`config.json` of the released checkpoints lives in `gated_interp.loading.hf_config`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

GateKind = Literal["none", "headwise", "elementwise"]
# Where the gate rows sit in the checkpoint's q_proj: per key-value group (the paper's release) or
# interleaved per query head (Qwen3-Next, Qwen3.5). Only loading and saving read it.
GateLayout = Literal["per_kv_group", "per_head"]
GATE_LAYOUTS: tuple[str, ...] = ("per_kv_group", "per_head")
# Token mixers a block may have: softmax attention (`blocks.{l}.attn`) or Gated DeltaNet
# (`blocks.{l}.linear_attn`), as transformers' `config.layer_types` names them.
LAYER_TYPES: tuple[str, ...] = ("full_attention", "linear_attention")
GATE_KINDS: tuple[str, ...] = ("none", "headwise", "elementwise")
# The released variants and their gate kinds: the one table every name↔gate lookup reads.
VARIANT_GATES: dict[str, str] = {"baseline": "none", "gate_headwise": "headwise", "gate_elementwise": "elementwise"}
GATE_VARIANTS: dict[str, str] = {gate: variant for variant, gate in VARIANT_GATES.items()}


def variant_of(gate: str) -> str:
    """The released variant name of a gate kind: "none" → "baseline", "headwise" → "gate_headwise"."""
    if gate not in GATE_VARIANTS:
        raise ValueError(f"gate must be one of {GATE_KINDS}, got {gate!r}")
    return GATE_VARIANTS[gate]


def gate_of(variant: str) -> str:
    """The gate kind of a released variant name: "gate_headwise" → "headwise"."""
    if variant not in VARIANT_GATES:
        raise ValueError(f"unknown variant {variant!r}; choose from {tuple(VARIANT_GATES)}")
    return VARIANT_GATES[variant]


# Standard deviation of the random initial weights (`HookedGatedQwen3.init_weights`), TL's `cfg.init_range`.
INIT_STD = 0.02

UNGROUP_UNSUPPORTED = (
    "ungroup_grouped_query_attention is not supported: hook_k/hook_v stay per key-value head "
    "([batch, pos, kv_head, d_head]). Use model.W_K / model.W_V (already expanded to every query head) "
    "or repeat the cached keys with .repeat_interleave(cfg.n_groups, dim=2)."
)
N_DEVICES_UNSUPPORTED = (
    "n_devices > 1 (TransformerLens' layer-wise multi-GPU split) is not supported: for a model bigger than "
    "one device, load it with accelerate's device map, load_hooked(..., device_map='auto', max_memory=..., "
    "offload_folder=...), which places each block whole on a GPU, the CPU or the disk; or use one device, "
    "e.g. load_hooked(..., device='cuda'), or a smaller dtype (dtype=torch.bfloat16)."
)


# The largest RMSNorm epsilon accepted. Released models use 1e-6 (Qwen3) to 1e-5; an epsilon near
# the mean square of the activations (embeddings sit around 1e-3 to 1e-2) stops the norm from
# normalising, so a larger value is a typo or a broken config, never a model worth measuring.
MAX_RMS_NORM_EPS = 1e-2


def rms_norm_eps_problem(eps: Any) -> str | None:
    """Why `eps` is not a usable `rms_norm_eps` (a finite number in (0, MAX_RMS_NORM_EPS]), or None."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        return "a finite number > 0"
    if eps > MAX_RMS_NORM_EPS:
        return f"at most {MAX_RMS_NORM_EPS} (released models use 1e-6; a larger epsilon stops the norm normalising)"
    return None


@dataclass
class GatedQwen3Config:
    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    n_key_value_heads: int | None = None  # None means plain multi-head attention
    n_ctx: int = 2048  # only a default for generation; RoPE has no hard limit
    gate: GateKind = "none"
    use_qk_norm: bool = True
    qkv_bias: bool = False  # the released code puts this bias on q, k, v *and* o
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-6  # in (0, MAX_RMS_NORM_EPS]
    rope_theta: float = 1_000_000.0
    rope_scaling: dict[str, Any] | None = None  # {"rope_type": "linear", "factor": f} or None
    use_attn_result: bool = False
    model_name: str = "gated-qwen3"
    tokenizer_name: str | None = None
    device: str | None = None
    dtype: torch.dtype = torch.float32
    hf_extra: dict[str, Any] = field(default_factory=dict)  # config.json keys we carry but do not use

    # Hybrid models (Qwen3.5, Qwen3-Next); the defaults are the paper's models.
    layer_types: tuple[str, ...] | None = None  # one of LAYER_TYPES per layer; None: all full attention
    gate_layout: GateLayout = "per_kv_group"
    partial_rotary_factor: float = 1.0  # rotary turns the first d_head * factor dims of q and k
    zero_centred_norms: bool = False  # every RMSNorm (not the DeltaNet's gated one) multiplies by 1 + w
    # Gated DeltaNet (linear-attention layers): key/query heads, value heads, their widths, conv width.
    linear_n_key_heads: int = 0
    linear_n_value_heads: int = 0
    linear_d_key: int = 0
    linear_d_value: int = 0
    linear_conv_kernel: int = 4
    # Sparse mixture of experts: the layers whose MLP is one, and its sizes (0 experts: dense only).
    moe_layers: tuple[int, ...] = ()
    n_experts: int = 0
    n_experts_per_token: int = 0
    d_mlp_expert: int = 0
    d_mlp_shared: int = 0  # the shared expert, scaled by sigmoid(shared_expert_gate); 0: none
    norm_topk_prob: bool = True  # renormalise the chosen experts' probabilities to sum to one

    # Constants that TransformerLens code reads from a config; fixed for this architecture.
    normalization_type: str = "RMS"
    act_fn: str = "silu"
    attn_only: bool = False
    positional_embedding_type: str = "rotary"
    final_rms: bool = True
    gated_mlp: bool = True
    attention_dir: str = "causal"
    original_architecture: str = "Qwen3ForCausalLM"
    parallel_attn_mlp: bool = False
    n_devices: int = 1  # one device; TransformerLens' multi-device split is not implemented
    tokenizer_prepends_bos: bool = False  # BOS is added by `to_tokens(prepend_bos=...)`, never by the tokenizer
    tokenizer_appends_eos: bool = False
    # None until a tokenizer is attached: then True exactly when the tokenizer has a BOS token.
    default_prepend_bos: bool | None = None
    default_padding_side: Literal["left", "right"] = "right"

    # TransformerLens' switches (`model.set_use_*`): each makes the hooks of `gated_interp.hooks`
    # with that `switch` fire. All off by default, as in TransformerLens.
    use_split_qkv_input: bool = False
    use_attn_in: bool = False
    use_hook_mlp_in: bool = False
    use_hook_tokens: bool = False
    ungroup_grouped_query_attention: bool = False

    def __post_init__(self) -> None:
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.gate not in GATE_KINDS:
            raise ValueError(f"gate must be one of {GATE_KINDS}, got {self.gate!r}")
        if self.n_heads % self.n_key_value_heads != 0:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads "
                f"({self.n_key_value_heads}) for grouped-query attention"
            )
        if (problem := rms_norm_eps_problem(self.rms_norm_eps)) is not None:
            raise ValueError(f"rms_norm_eps must be {problem}, got {self.rms_norm_eps!r}")
        if self.d_head % 2 != 0:
            raise ValueError(f"d_head must be even for rotary embeddings, got {self.d_head}")
        self._check_hybrid()
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            if kind not in ("default", "linear"):
                raise NotImplementedError(
                    f"rope_scaling type {kind!r} is not supported yet (supported: default, linear)"
                )
        if self.default_padding_side not in ("left", "right"):
            raise ValueError(f"default_padding_side must be 'left' or 'right', got {self.default_padding_side!r}")
        if self.ungroup_grouped_query_attention:
            raise ValueError(UNGROUP_UNSUPPORTED)
        if self.n_devices != 1:
            raise ValueError(N_DEVICES_UNSUPPORTED)
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"

    def _check_hybrid(self) -> None:
        if self.layer_types is not None:
            self.layer_types = tuple(self.layer_types)
            unknown = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if unknown or len(self.layer_types) != self.n_layers:
                raise ValueError(
                    f"layer_types must give one of {LAYER_TYPES} for each of the {self.n_layers} layers, "
                    f"got {self.layer_types!r}"
                )
        self.moe_layers = tuple(sorted(self.moe_layers))
        if self.gate_layout not in GATE_LAYOUTS:
            raise ValueError(f"gate_layout must be one of {GATE_LAYOUTS}, got {self.gate_layout!r}")
        if not 0 < self.partial_rotary_factor <= 1 or self.rotary_dim % 2:
            raise ValueError(
                f"partial_rotary_factor must be in (0, 1] and give an even rotary width; got "
                f"{self.partial_rotary_factor} of d_head {self.d_head}"
            )
        if self.linear_attention_layers:
            sizes = dict(
                linear_n_key_heads=self.linear_n_key_heads,
                linear_n_value_heads=self.linear_n_value_heads,
                linear_d_key=self.linear_d_key,
                linear_d_value=self.linear_d_value,
                linear_conv_kernel=self.linear_conv_kernel,
            )
            if min(sizes.values()) < 1 or self.linear_n_value_heads % self.linear_n_key_heads:
                raise ValueError(
                    f"linear-attention layers need positive Gated DeltaNet sizes, value heads a multiple "
                    f"of key heads; got {sizes}"
                )
        if self.moe_layers:
            if not set(self.moe_layers) <= set(range(self.n_layers)):
                raise ValueError(f"moe_layers must be layers 0..{self.n_layers - 1}, got {self.moe_layers}")
            if not 0 < self.n_experts_per_token <= self.n_experts or self.d_mlp_expert < 1:
                raise ValueError(
                    f"MoE layers need 0 < n_experts_per_token ({self.n_experts_per_token}) <= n_experts "
                    f"({self.n_experts}) and d_mlp_expert >= 1 ({self.d_mlp_expert})"
                )

    @classmethod
    def tiny(cls, **overrides: Any) -> GatedQwen3Config:
        """The bundled tiny models' architecture (4 layers, 4 query heads over 2 key-value heads,
        d_model 128), with any field overridden: the one starting point of every small model that
        `gated_interp.train` and the benchmarks build."""
        fields_ = dict(
            d_model=128,
            n_layers=4,
            n_heads=4,
            n_key_value_heads=2,
            d_head=32,
            d_mlp=384,
            d_vocab=4096,
            n_ctx=256,
            rope_theta=10_000.0,  # not Qwen3's 1e6: contexts here are a few hundred tokens
        )
        return cls(**{**fields_, **overrides})

    @property
    def is_gated(self) -> bool:
        """Whether attention has the output gate (headwise or elementwise)."""
        return self.gate != "none"

    # Read-only TransformerLens names for fields this config already has under its own name.
    @property
    def d_vocab_out(self) -> int:
        return self.d_vocab

    @property
    def eps(self) -> float:
        return self.rms_norm_eps

    @property
    def rotary_base(self) -> float:
        return self.rope_theta

    @property
    def rotary_dim(self) -> int:
        """Leading dims of each query and key head that rotary turns (all of them in the paper's models)."""
        return int(self.d_head * self.partial_rotary_factor)

    def layer_type(self, layer: int) -> str:
        """ "full_attention" or "linear_attention"."""
        return "full_attention" if self.layer_types is None else self.layer_types[layer]

    @property
    def full_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if self.layer_type(i) == "full_attention")

    @property
    def linear_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.n_layers) if self.layer_type(i) == "linear_attention")

    @property
    def is_hybrid(self) -> bool:
        """Whether some layers are not plain softmax attention with a dense MLP (Qwen3.5, Qwen3-Next)."""
        return bool(self.linear_attention_layers or self.moe_layers)

    def mlp_kind(self, layer: int) -> str:
        """ "dense" (SwiGLU) or "moe" (sparse mixture of experts)."""
        return "moe" if layer in self.moe_layers else "dense"

    # Read-only TransformerLens fields for what this architecture does not have (TransformerLens'
    # own values for "off"), so that code reading them takes the right branch.
    @property
    def output_logits_soft_cap(self) -> float:
        return -1.0  # no soft cap on the logits (Gemma 2's); TransformerLens' "off"

    @property
    def attn_scores_soft_cap(self) -> float:
        return -1.0  # no soft cap on the attention scores

    @property
    def use_local_attn(self) -> bool:
        return False  # every layer attends to the whole causal context

    @property
    def num_experts(self) -> None:
        return None  # a dense MLP, no mixture of experts

    @property
    def rmsnorm_uses_offset(self) -> bool:
        return False  # Qwen3's RMSNorm multiplies by w, not (1 + w) as Gemma's does

    @property
    def init_range(self) -> float:
        return INIT_STD  # the std of `HookedGatedQwen3.init_weights`

    @property
    def seed(self) -> None:
        return None  # the config seeds nothing: `init_weights(seed=...)` takes the seed

    @property
    def n_groups(self) -> int:
        """Query heads per key-value head."""
        return self.n_heads // self.n_key_value_heads

    @property
    def gate_width(self) -> int:
        """Gate logits per head: 1 (headwise), d_head (elementwise) or 0 (no gate)."""
        return {"none": 0, "headwise": 1, "elementwise": self.d_head}[self.gate]

    @property
    def d_q_proj(self) -> int:
        """Output width of the released `q_proj`: queries followed by gate logits."""
        return self.n_heads * (self.d_head + self.gate_width)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def n_params(self) -> int:
        """Matrix parameters (norm weights, biases and the DeltaNet's per-head scalars left out)."""
        attn = self.d_model * self.d_q_proj + 2 * self.d_model * self.n_key_value_heads * self.d_head
        attn += self.n_heads * self.d_head * self.d_model
        key, value = self.linear_n_key_heads * self.linear_d_key, self.linear_n_value_heads * self.linear_d_value
        linear = self.d_model * (2 * key + 3 * value + 2 * self.linear_n_value_heads)
        linear += (2 * key + value) * self.linear_conv_kernel
        dense = 3 * self.d_model * self.d_mlp
        moe = self.n_experts * (3 * self.d_model * self.d_mlp_expert + self.d_model)
        moe += 3 * self.d_model * self.d_mlp_shared + (self.d_model if self.d_mlp_shared else 0)
        total = self.d_vocab * self.d_model * (1 if self.tie_word_embeddings else 2)
        for layer in range(self.n_layers):
            total += attn if self.layer_type(layer) == "full_attention" else linear
            total += moe if self.mlp_kind(layer) == "moe" else dense
        return total
