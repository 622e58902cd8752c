"""A Hugging Face ``config.json`` as the fields of a ``model:`` section.

``model: {hf_config: path/to/config.json}`` reads the released shape of a model from disk
(json only: no network, no weights, no transformers). Each supported architecture names its
shape with its own keys (``transformers``' LlamaConfig, MistralConfig, MixtralConfig,
Qwen2Config, Qwen2MoeConfig, Qwen3Config, Qwen3MoeConfig, DeepseekV3Config, GptOssConfig);
this module maps
them onto the contract's (DESIGN.md): num_hidden_layers -> layers, hidden_size -> hidden,
num_attention_heads -> heads, num_key_value_heads -> kv_heads, intermediate_size ->
ffn_hidden, vocab_size -> vocab, tie_word_embeddings -> tied_embeddings, head_dim ->
head_dim, max_position_embeddings -> seq_len (the longest context the model was released
for; ``seq_len:`` next to ``hf_config`` trains at another length), the experts' keys ->
``moe:`` (Qwen2-MoE's one shared expert of ``shared_expert_intermediate_size`` as that many
routed experts' widths: a SwiGLU's weights and FLOPs grow with its width) and MLA's ranks ->
``attention: {kind: mla, ...}``; gpt-oss's
``sliding_window`` and ``layer_types`` -> ``attention: {sliding_window, full_attention_every,
sinks: true}`` and its ``attention_bias`` (with the biased router and experts every gpt-oss
checkpoint has) -> ``linear_bias``.

What the blocks built from these shapes leave out (each under 0.01 % of the parameters of the
released models): Qwen2's and Qwen2-MoE's q/k/v biases, Qwen2-MoE's shared-expert gate
(``hidden`` weights a block), Qwen3's per-head q/k RMSNorms (2·head_dim weights a
block), DeepSeek-V3's router score-correction bias (one number per expert) and its
multi-token-prediction module (``num_nextn_predict_layers``: 14B beside the 671B main model,
used only in training's auxiliary loss). A Mistral 7B sliding window is full causal
attention, exact when ``seq_len`` is at most the window; gpt-oss's 128-token bands are built
(``dlsim.workload.attention``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlsim.data import ROOT

# architecture -> (its family, head_dim when the config leaves it out: None = hidden/heads)
ARCHITECTURES: dict[str, tuple[str, int | None]] = {
    "LlamaForCausalLM": ("dense", None),
    "MistralForCausalLM": ("dense", None),
    "Qwen2ForCausalLM": ("dense", None),
    "Qwen3ForCausalLM": ("dense", 128),
    "MixtralForCausalLM": ("mixtral", None),
    "Qwen2MoeForCausalLM": ("qwen2_moe", None),
    "Qwen3MoeForCausalLM": ("qwen3_moe", 128),
    "DeepseekV3ForCausalLM": ("deepseek_v3", None),
    "GptOssForCausalLM": ("gpt_oss", 64),
}


def resolve(path: str, scenario_dir: Path | None) -> Path:
    """``path`` as given when absolute, else relative to the scenario's folder, the working
    directory, then dlsim's bundled data (``examples/hf/<model>.json`` ship with the wheel:
    dlsim/data.py). Raises ValueError naming the places looked in."""
    given = Path(path)
    candidates = [given] if given.is_absolute() else [
        *([scenario_dir / given] if scenario_dir is not None else []), given, ROOT / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    where = ", ".join(str(c) for c in candidates)
    raise ValueError(f"config file '{path}' not found (looked for {where}); give a Hugging "
                     "Face config.json, its path relative to the scenario file, or a bundled "
                     "one such as examples/hf/llama-3-8b.json")


def read(path: Path) -> dict[str, Any]:
    """The JSON mapping in ``path``; an unreadable or malformed file is a ValueError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is not a JSON config.json ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds no JSON mapping of a model's configuration")
    return data


def model_fields(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The ``model:`` fields of ``config`` (read from ``path``, named in errors)."""
    arch = config.get("architectures")
    names = arch if isinstance(arch, list) else [arch]
    known = [a for a in names if isinstance(a, str) and a in ARCHITECTURES]
    if not known:
        raise ValueError(f"{path} has architectures {arch!r}, which dlsim cannot build; it "
                         f"imports {', '.join(ARCHITECTURES)} (field 'architectures' of a "
                         "Hugging Face config.json)")
    family, default_head_dim = ARCHITECTURES[known[0]]

    def need(key: str, default: int | None = None, least: int = 1) -> int:
        value = config.get(key, default)
        if value is None and default is None:
            raise ValueError(f"{path} ({known[0]}) lacks '{key}'")
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"'{key}' in {path} must be an integer of at least {least} "
                             f"(got {value!r})")
        return value

    heads = need("num_attention_heads")
    kv_heads = need("num_key_value_heads", heads)
    if heads % kv_heads:
        raise ValueError(f"num_key_value_heads ({kv_heads}) in {path} must divide "
                         f"num_attention_heads ({heads})")
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise ValueError(f"'tie_word_embeddings' in {path} must be true or false")
    fields: dict[str, Any] = {
        "kind": "transformer", "mlp": "swiglu", "layers": need("num_hidden_layers"),
        "hidden": need("hidden_size"), "heads": heads, "kv_heads": kv_heads,
        "ffn_hidden": need("intermediate_size"), "vocab": need("vocab_size"),
        "seq_len": need("max_position_embeddings"), "tied_embeddings": tied}
    head_dim = config.get("head_dim") or default_head_dim
    if head_dim is not None and family != "deepseek_v3":
        fields["head_dim"] = need("head_dim", head_dim)
    if family == "mixtral":
        fields["moe"] = {"experts": need("num_local_experts"),
                         "top_k": need("num_experts_per_tok"),
                         "expert_ffn_hidden": fields["ffn_hidden"]}
    elif family in ("qwen2_moe", "qwen3_moe"):
        _only(config, path, "decoder_sparse_step", 1, "every block a MoE block")
        if config.get("mlp_only_layers"):
            raise ValueError(f"'mlp_only_layers' in {path}: dlsim builds dense blocks only "
                             "as the first ones (moe.dense_layers), not in between")
        width = need("moe_intermediate_size")
        fields["moe"] = {"experts": need("num_experts"), "top_k": need("num_experts_per_tok"),
                         "expert_ffn_hidden": width}
        shared = need("shared_expert_intermediate_size", 0, least=0)
        if family == "qwen2_moe" and shared:
            if shared % width:
                raise ValueError(f"'shared_expert_intermediate_size' ({shared}) in {path} "
                                 f"must be a multiple of moe_intermediate_size ({width}): "
                                 "dlsim builds the shared expert as that many experts")
            fields["moe"]["shared_experts"] = shared // width
    elif family == "gpt_oss":
        fields["moe"] = {"experts": need("num_local_experts"),
                         "top_k": need("num_experts_per_tok"),
                         "expert_ffn_hidden": fields["ffn_hidden"]}
        fields["attention"] = {"sinks": True, **_banded(config, path, fields["layers"])}
        bias = config.get("attention_bias", False)
        if not isinstance(bias, bool):
            raise ValueError(f"'attention_bias' in {path} must be true or false")
        if not bias:
            raise ValueError(f"'attention_bias' in {path} is false; dlsim builds gpt-oss "
                             "with its released biases (attention, router and experts)")
        fields["linear_bias"] = True
    elif family == "deepseek_v3":
        _only(config, path, "moe_layer_freq", 1, "every block after the dense ones a MoE "
              "block")
        fields["moe"] = {"experts": need("n_routed_experts"),
                         "top_k": need("num_experts_per_tok"),
                         "expert_ffn_hidden": need("moe_intermediate_size"),
                         "shared_experts": need("n_shared_experts", 0, least=0),
                         "dense_layers": need("first_k_dense_replace", 0, least=0)}
        q_lora = config.get("q_lora_rank")
        fields["attention"] = {
            "kind": "mla", "kv_lora_rank": need("kv_lora_rank"),
            "q_lora_rank": None if q_lora is None else need("q_lora_rank"),
            "qk_nope_head_dim": need("qk_nope_head_dim"),
            "qk_rope_head_dim": need("qk_rope_head_dim"), "v_head_dim": need("v_head_dim")}
    if "moe" in fields:
        moe = fields["moe"]
        if moe["top_k"] > moe["experts"]:
            raise ValueError(f"num_experts_per_tok ({moe['top_k']}) in {path} exceeds the "
                             f"experts ({moe['experts']})")
        if moe.get("dense_layers", 0) >= fields["layers"]:
            raise ValueError(f"first_k_dense_replace ({moe['dense_layers']}) in {path} must "
                             f"be fewer than num_hidden_layers ({fields['layers']})")
    return fields


def _banded(config: dict[str, Any], path: Path, layers: int) -> dict[str, int]:
    """gpt-oss's ``sliding_window`` and ``layer_types`` as attention.sliding_window and
    full_attention_every: every k-th block full attention, the others banded."""
    window = config.get("sliding_window")
    types = config.get("layer_types")
    if window is None:
        return {}
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"'sliding_window' in {path} must be a positive integer "
                         f"(got {window!r})")
    if types is None:
        return {"sliding_window": window}
    full = [i for i, kind in enumerate(types) if kind == "full_attention"]
    every = full[0] + 1 if full else None
    if every == 1:
        return {}  # every block full attention
    expected = ["full_attention" if every and (i + 1) % every == 0 else "sliding_attention"
                for i in range(layers)]
    if not isinstance(types, list) or types != expected:
        raise ValueError(f"'layer_types' in {path} must list {layers} blocks, sliding_attention "
                         "but for full_attention at every k-th block (gpt-oss: every 2nd)")
    return {"sliding_window": window} if every is None else {
        "sliding_window": window, "full_attention_every": every}


def _only(config: dict[str, Any], path: Path, key: str, value: int, meaning: str) -> None:
    if config.get(key, value) != value:
        raise ValueError(f"'{key}' in {path} is {config[key]!r}; dlsim builds {key} {value} "
                         f"only ({meaning})")


def import_fields(path: str, scenario_dir: Path | None) -> dict[str, Any]:
    """The ``model:`` fields of the config at ``path`` (``resolve``); ValueError if the file
    cannot be found, read or built."""
    file = resolve(path, scenario_dir)
    return model_fields(read(file), file)
