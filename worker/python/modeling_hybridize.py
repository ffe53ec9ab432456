# Hugging Face transformers code for a hybrid exported by hybridize (docs/hybrid_format.md).
#
# hybridize writes this file into every model directory it exports, and config.json's "auto_map"
# points transformers at it:
#
#     model = AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True)
#
# Softmax layers ("full_attention", "sliding_attention") are transformers' own decoder layers of
# the teacher's family (Llama, Qwen2, Qwen3, Mistral), so they compute what the teacher computed.
# Linear layers ("linear_attention") are the mixers of worker/src/linear_mixer.cc in plain
# PyTorch, written from the same definitions:
#   gated_deltanet  S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,
#                   o_t = S_t^T q_t / sqrt(D), after causal depthwise convolutions (+ SiLU) and
#                   L2-normalised q, k; per-head RMSNorm, output gate silu(g_proj x), o_proj.
#   gla             S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T, o_t = S_t^T q_t / sqrt(D), with
#                   g_t = logsigmoid(gk_proj x) / gate_logit_normalizer; RMSNorm, gate, o_proj.
#   linear_elu      phi = elu + 1 on q and k, o_t = S_t^T phi(q_t) / (z_t^T phi(q_t) + 1e-6)
#                   with z_t the running sum of phi(k); no gates, no norm.
# Recurrences run in float32 whatever the weights' dtype, as in hybridize. On CUDA, with
# HYBRIDIZE_USE_FLA=1 and the `fla` package (flash-linear-attention) importable, its chunked
# kernels compute the gated_deltanet and gla prefill instead. Off by default: measured on an H200
# (fla 0.5.2, 2026-12-02) on the tiny test hybrids (head dim 8), fla's gated delta rule was
# 0.032 off in the logits and its GLA kernel failed with "CUDA error: misaligned address", which
# leaves the CUDA context unusable. Decoding keeps a fixed-size state per linear layer
# (HybridCache), so `generate` works.
#
# Limits: attention_mask may not mark padding (zeros): the recurrent states would absorb padding
# tokens, so padded batches are refused; run prompts of different lengths separately.
# Flash and flex attention are not offered (this file builds its own additive masks); "eager" and
# "sdpa" are.
import importlib
import inspect
import math
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from transformers.modeling_outputs import CausalLMOutputWithPast

try:
    from transformers import GenerationMixin
except ImportError:  # transformers before 4.45: every PreTrainedModel generates
    GenerationMixin = object

_MIXERS = ("gated_deltanet", "gla", "linear_elu")
_LINEAR = "linear_attention"
_SLIDING = "sliding_attention"


_fla_failed = []  # the first error an fla kernel raised; fla is not tried again after one


def _use_fla(device):
    if device.type != "cuda" or os.environ.get("HYBRIDIZE_USE_FLA", "0") != "1" or _fla_failed:
        return False
    try:
        importlib.import_module("fla")
    except ImportError:
        return False
    return True


def _recurrence(use_fla, fla_fn, torch_fn, *args):
    """fla_fn(*args) when asked for, falling back (with one warning) to torch_fn(*args) if this
    fla version's kernel refuses the call; torch_fn(*args) otherwise."""
    if use_fla:
        try:
            return fla_fn(*args)
        except Exception as e:  # an fla version whose signature or dtype support differs
            _fla_failed.append(e)
            warnings.warn(f"fla kernel {fla_fn.__name__} failed ({type(e).__name__}: {e}); "
                          "using the PyTorch recurrence from now on")
    return torch_fn(*args)


# --------------------------------------------------------------------------------------------
# Linear mixers


class _CausalDepthwiseConv(nn.Module):
    """Depthwise causal convolution over time; weight [C, K], the last tap is the current token."""

    def __init__(self, channels, kernel_size):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels, kernel_size))

    def forward(self, u, tail):
        # u: [B, T, C]; tail: the previous K-1 inputs [B, C, K-1] or None (zeros).
        # Returns the output [B, T, C] and the new tail.
        b, _, c = u.shape
        k = self.weight.shape[1]
        ut = u.transpose(1, 2)
        if tail is None:
            tail = ut.new_zeros(b, c, k - 1)
        full = torch.cat([tail.to(ut.dtype), ut], dim=2)  # [B, C, K-1+T]
        t = ut.shape[2]
        # A sum over the K taps rather than F.conv1d: cuDNN may run convolutions in TF32, which
        # would not be the fp32 function hybridize computes.
        y = sum(full[:, :, j:j + t] * self.weight[:, j:j + 1] for j in range(k))  # [B, C, T]
        return y.transpose(1, 2), full[:, :, full.shape[2] - (k - 1):].clone()


class _HeadRMSNorm(nn.Module):
    """RMSNorm over the head dimension: statistics in float32, cast back, then the weight."""

    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.to(x.dtype)


def _l2_normalize(x):
    return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)


def _gla_recurrent(q, k, v, g, scale, state):
    # q, k, g: [B, H, T, K]; v: [B, H, T, V]; state [B, H, K, V]. Returns o [B, H, T, V], state.
    outs = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp().unsqueeze(-1) + k[:, :, t].unsqueeze(-1) * v[:, :, t].unsqueeze(-2)
        outs.append(torch.matmul(q[:, :, t].unsqueeze(-2), state).squeeze(-2) * scale)
    return torch.stack(outs, dim=2), state


def _gated_delta_recurrent(q, k, v, g, beta, scale, state):
    # q, k: [B, H, T, K]; v: [B, H, T, V]; g, beta: [B, H, T]; state [B, H, K, V].
    outs = []
    for t in range(q.shape[2]):
        decayed = state * g[:, :, t].exp()[..., None, None]
        kts = torch.matmul(k[:, :, t].unsqueeze(-2), decayed).squeeze(-2)  # [B, H, V]
        w = beta[:, :, t].unsqueeze(-1) * (v[:, :, t] - kts)
        state = decayed + k[:, :, t].unsqueeze(-1) * w.unsqueeze(-2)
        outs.append(torch.matmul(q[:, :, t].unsqueeze(-2), state).squeeze(-2) * scale)
    return torch.stack(outs, dim=2), state


# fla is imported through importlib: transformers refuses remote code whose import statements
# name a package that is not installed, and fla is optional.
def _fla_gated_delta(q, k, v, g, beta, scale, state):
    chunk_gated_delta_rule = importlib.import_module("fla.ops.gated_delta_rule").chunk_gated_delta_rule
    # fla takes [B, T, H, D] and the same state layout [B, H, K, V].
    o, final = chunk_gated_delta_rule(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(), g.transpose(1, 2).contiguous(),
        beta.transpose(1, 2).contiguous(), scale=scale, initial_state=state,
        output_final_state=True)
    return o.transpose(1, 2).float(), final.float()


def _fla_gla(q, k, v, g, scale, state):
    chunk_gla = importlib.import_module("fla.ops.gla").chunk_gla
    o, final = chunk_gla(
        q.transpose(1, 2).contiguous(), k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(), g.transpose(1, 2).contiguous(), scale=scale,
        initial_state=state, output_final_state=True)
    return o.transpose(1, 2).float(), final.float()


class HybridizeLinearAttention(nn.Module):
    """A linear-attention layer as hybridize stores it under model.layers.{i}.linear_attn."""

    def __init__(self, config, layer_idx):
        super().__init__()
        opts = config.linear_attention
        self.mixer = opts["mixer"]
        if self.mixer not in _MIXERS:
            raise ValueError(f"linear_attention.mixer '{self.mixer}' is not one of {_MIXERS}")
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        hidden, hd = config.hidden_size, self.num_heads * self.head_dim
        qkv_bias, o_bias = _projection_biases(config)
        self.q_proj = nn.Linear(hidden, hd, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, hd, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, hd, bias=qkv_bias)
        self.o_proj = nn.Linear(hd, hidden, bias=o_bias)
        if self.mixer != "linear_elu":
            self.g_proj = nn.Linear(hidden, hd, bias=True)
            self.o_norm = _HeadRMSNorm(self.head_dim, float(opts.get("norm_eps", 1e-5)))
        if self.mixer == "gated_deltanet":
            conv_size = int(opts.get("conv_size", 4))
            self.conv_silu = bool(opts.get("conv_silu", True))
            self.q_conv1d = _CausalDepthwiseConv(hd, conv_size)
            self.k_conv1d = _CausalDepthwiseConv(hd, conv_size)
            self.v_conv1d = _CausalDepthwiseConv(hd, conv_size)
            self.b_proj = nn.Linear(hidden, self.num_heads, bias=False)
            self.a_proj = nn.Linear(hidden, self.num_heads, bias=False)
            self.A_log = nn.Parameter(torch.zeros(self.num_heads))
            self.dt_bias = nn.Parameter(torch.zeros(self.num_heads))
        elif self.mixer == "gla":
            rank = int(opts.get("gate_rank", 16))
            self.gate_logit_normalizer = float(opts.get("gate_logit_normalizer", 16.0))
            self.gk_proj = nn.Sequential(nn.Linear(hidden, rank, bias=False),
                                         nn.Linear(rank, hd, bias=True))

    def forward(self, x, state=None):
        """x: [B, T, hidden]; state: the dict a previous call returned, or None (start).

        Returns the output [B, T, hidden] and the new state.
        """
        b, t, _ = x.shape
        h, d = self.num_heads, self.head_dim
        state = state or {}
        new_state = {}
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.mixer == "gated_deltanet":
            q, new_state["conv_q"] = self.q_conv1d(q, state.get("conv_q"))
            k, new_state["conv_k"] = self.k_conv1d(k, state.get("conv_k"))
            v, new_state["conv_v"] = self.v_conv1d(v, state.get("conv_v"))
            if self.conv_silu:
                q, k, v = F.silu(q), F.silu(k), F.silu(v)

        def heads(u):  # [B, T, H*D] -> [B, H, T, D] in float32
            return u.view(b, t, h, -1).transpose(1, 2).float()

        q, k, v = heads(q), heads(k), heads(v)
        s0 = state.get("recurrent")
        fla = t > 1 and _use_fla(x.device)
        scale = 1.0 / math.sqrt(d)
        if self.mixer == "gated_deltanet":
            q, k = _l2_normalize(q), _l2_normalize(k)
            beta = torch.sigmoid(self.b_proj(x)).float().transpose(1, 2)  # [B, H, T]
            g = (-self.A_log.float().exp() *
                 F.softplus(self.a_proj(x).float() + self.dt_bias.float())).transpose(1, 2)
            if s0 is None:
                s0 = q.new_zeros(b, h, d, d)
            o, new_state["recurrent"] = _recurrence(fla, _fla_gated_delta, _gated_delta_recurrent,
                                                    q, k, v, g, beta, scale, s0)
        elif self.mixer == "gla":
            g = heads(F.logsigmoid(self.gk_proj(x).float()) / self.gate_logit_normalizer)
            if s0 is None:
                s0 = q.new_zeros(b, h, d, d)
            o, new_state["recurrent"] = _recurrence(fla, _fla_gla, _gla_recurrent,
                                                    q, k, v, g, scale, s0)
        else:  # phi = elu + 1; the last value column carries the normaliser
            q, k = F.elu(q) + 1, F.elu(k) + 1
            v1 = torch.cat([v, v.new_ones(b, h, t, 1)], dim=-1)
            if s0 is None:
                s0 = q.new_zeros(b, h, d, d + 1)
            o, new_state["recurrent"] = _gla_recurrent(q, k, v1, torch.zeros_like(k), 1.0, s0)
            o = o[..., :d] / (o[..., d:] + 1e-6)
        o = o.transpose(1, 2).to(x.dtype)  # [B, T, H, D]
        if self.mixer != "linear_elu":
            o = self.o_norm(o) * F.silu(self.g_proj(x)).view(b, t, h, d)
        return self.o_proj(o.reshape(b, t, h * d)), new_state


def _projection_biases(config):
    """(q/k/v bias, o bias) of the teacher's attention, by family (as hybridize reads them)."""
    family = config.model_type
    if family == "qwen2":
        return True, False
    if family in ("llama", "qwen3"):
        bias = bool(getattr(config, "attention_bias", False))
        return bias, bias
    return False, False


# --------------------------------------------------------------------------------------------
# Decoding state


class HybridCache:
    """Decoding state of a hybrid: keys and values of the softmax layers, the recurrent state
    (and convolution tails) of the linear layers, and the number of tokens seen."""

    is_compileable = False

    def __init__(self, num_layers):
        self.key_cache = [None] * num_layers
        self.value_cache = [None] * num_layers
        self.linear_states = [None] * num_layers
        self.seen_tokens = 0

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        """Appends this step's keys and values ([B, Hkv, T, D]) and returns all of them."""
        if self.key_cache[layer_idx] is None:
            self.key_cache[layer_idx], self.value_cache[layer_idx] = key_states, value_states
        else:
            self.key_cache[layer_idx] = torch.cat([self.key_cache[layer_idx], key_states], dim=-2)
            self.value_cache[layer_idx] = torch.cat([self.value_cache[layer_idx], value_states], dim=-2)
        return self.key_cache[layer_idx], self.value_cache[layer_idx]

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def __len__(self):
        return len(self.key_cache)

    def reorder_cache(self, beam_idx):
        """Selects batch rows (beam search)."""
        def pick(t):
            return None if t is None else t.index_select(0, beam_idx.to(t.device))
        self.key_cache = [pick(t) for t in self.key_cache]
        self.value_cache = [pick(t) for t in self.value_cache]
        self.linear_states = [None if s is None else {n: pick(t) for n, t in s.items()}
                              for s in self.linear_states]

    def _reorder_cache(self, beam_idx):
        self.reorder_cache(beam_idx)
        return self


# --------------------------------------------------------------------------------------------
# Model


_FAMILIES = {"llama": "Llama", "qwen2": "Qwen2", "qwen3": "Qwen3", "mistral": "Mistral"}


def _family_pieces(family):
    module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    prefix = _FAMILIES[family]
    return {name: getattr(module, prefix + name)
            for name in ("DecoderLayer", "RMSNorm", "MLP", "RotaryEmbedding", "ForCausalLM")}


class HybridizeLinearDecoderLayer(nn.Module):
    """A teacher decoder layer whose attention block is a linear mixer."""

    def __init__(self, config, layer_idx, pieces):
        super().__init__()
        self.input_layernorm = pieces["RMSNorm"](config.hidden_size, eps=config.rms_norm_eps)
        self.linear_attn = HybridizeLinearAttention(config, layer_idx)
        self.post_attention_layernorm = pieces["RMSNorm"](config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = pieces["MLP"](config)

    def forward(self, hidden_states, state):
        a, state = self.linear_attn(self.input_layernorm(hidden_states), state)
        hidden_states = hidden_states + a
        hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, state


class HybridizeModel(nn.Module):
    def __init__(self, config, pieces):
        super().__init__()
        self.config = config
        layer_types = list(getattr(config, "layer_types", None) or
                           ["full_attention"] * config.num_hidden_layers)
        if len(layer_types) != config.num_hidden_layers:
            raise ValueError(f"layer_types has {len(layer_types)} entries, num_hidden_layers is "
                             f"{config.num_hidden_layers}")
        if _LINEAR in layer_types and not isinstance(getattr(config, "linear_attention", None), dict):
            raise ValueError("config.json has linear_attention layers but no 'linear_attention' "
                             "object with the mixer settings")
        self.layer_types = layer_types
        self.windows = [_window(config, t) for t in layer_types]
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         getattr(config, "pad_token_id", None))
        self.layers = nn.ModuleList(
            HybridizeLinearDecoderLayer(config, i, pieces) if t == _LINEAR
            else pieces["DecoderLayer"](config, i) for i, t in enumerate(layer_types))
        self.norm = pieces["RMSNorm"](config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = pieces["RotaryEmbedding"](config=config)
        params = inspect.signature(pieces["DecoderLayer"].forward).parameters
        self._cache_kwarg = "past_key_values" if "past_key_values" in params else "past_key_value"

    def forward(self, input_ids=None, inputs_embeds=None, position_ids=None, cache=None):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t = h.shape[:2]
        past = cache.seen_tokens if cache is not None else 0
        cache_position = torch.arange(past, past + t, device=h.device)
        if position_ids is None:
            position_ids = cache_position.unsqueeze(0).expand(b, -1)
        position_embeddings = self.rotary_emb(h, position_ids)
        masks = {}
        for i, layer in enumerate(self.layers):
            if self.layer_types[i] == _LINEAR:
                state = cache.linear_states[i] if cache is not None else None
                h, state = layer(h, state)
                if cache is not None:
                    cache.linear_states[i] = state
                continue
            window = self.windows[i]
            if window not in masks:
                masks[window] = _additive_mask(b, t, past, window, h.dtype, h.device)
            out = layer(h, attention_mask=masks[window], position_ids=position_ids,
                        use_cache=cache is not None, cache_position=cache_position,
                        position_embeddings=position_embeddings,
                        **{self._cache_kwarg: cache})
            h = out[0] if isinstance(out, tuple) else out
        if cache is not None:
            cache.seen_tokens += t
        return self.norm(h)


def _window(config, layer_type):
    """The sliding window of a softmax layer (None: full causal), by hybridize's reading."""
    if layer_type == _LINEAR:
        return None
    family = config.model_type
    window = getattr(config, "sliding_window", None)
    if family == "mistral":
        return window
    if family in ("qwen2", "qwen3"):
        if layer_type == _SLIDING and getattr(config, "use_sliding_window", False) and window:
            return window
    return None


def _additive_mask(batch, tokens, past, window, dtype, device):
    """[B, 1, T, past+T]: 0 where query i may attend key j (j <= past+i, and past+i-j < window),
    the dtype's lowest value elsewhere."""
    q = torch.arange(past, past + tokens, device=device).unsqueeze(1)
    k = torch.arange(past + tokens, device=device).unsqueeze(0)
    allowed = k <= q
    if window is not None:
        allowed = allowed & (k > q - window)
    mask = torch.zeros(tokens, past + tokens, dtype=dtype, device=device)
    mask = mask.masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[None, None].expand(batch, 1, -1, -1)


def _causal_lm_class(family, config_cls):
    pieces = _family_pieces(family)
    base = pieces["ForCausalLM"]

    class HybridForCausalLM(base):
        config_class = config_cls
        _supports_flash_attn = False
        _supports_flash_attn_2 = False
        _supports_flex_attn = False
        _is_stateful = True

        def __init__(self, config):
            # The family's PreTrainedModel initialiser, not its ForCausalLM's: the body is ours.
            super(base, self).__init__(config)
            self.model = HybridizeModel(config, pieces)
            self.vocab_size = config.vocab_size
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
            self.post_init()

        @classmethod
        def _supports_default_dynamic_cache(cls):
            # Linear layers keep a recurrent state, not keys and values: generate() must not
            # build a DynamicCache; forward() creates a HybridCache.
            return False

        def get_input_embeddings(self):
            return self.model.embed_tokens

        def set_input_embeddings(self, value):
            self.model.embed_tokens = value

        def get_output_embeddings(self):
            return self.lm_head

        def set_output_embeddings(self, value):
            self.lm_head = value

        def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                    past_key_values=None, inputs_embeds=None, labels=None, use_cache=None,
                    logits_to_keep=0, return_dict=None, **kwargs):
            if (input_ids is None) == (inputs_embeds is None):
                raise ValueError("give exactly one of input_ids and inputs_embeds")
            if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
                raise ValueError(
                    "attention_mask marks padding: this hybrid's linear-attention layers would "
                    "absorb padding tokens into their state; run prompts of different lengths "
                    "separately")
            if use_cache is None:
                use_cache = getattr(self.config, "use_cache", True)
            cache = past_key_values
            if cache is not None and not isinstance(cache, HybridCache):
                seen = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
                if seen:
                    raise TypeError(f"past_key_values of type {type(cache).__name__} cannot carry "
                                    "a hybrid's linear-attention state; pass the HybridCache "
                                    "this model returned")
                cache = None
            if cache is None and use_cache:
                cache = HybridCache(self.config.num_hidden_layers)
            hidden = self.model(input_ids=input_ids, inputs_embeds=inputs_embeds,
                                position_ids=position_ids, cache=cache)
            if isinstance(logits_to_keep, int) and logits_to_keep > 0:
                hidden = hidden[:, -logits_to_keep:]
            elif isinstance(logits_to_keep, torch.Tensor):
                hidden = hidden[:, logits_to_keep]
            logits = self.lm_head(hidden)
            loss = None
            if labels is not None:
                shift = logits[:, :-1].float().reshape(-1, logits.shape[-1])
                loss = F.cross_entropy(shift, labels[:, 1:].reshape(-1).to(logits.device),
                                       ignore_index=-100)
            out = CausalLMOutputWithPast(loss=loss, logits=logits,
                                         past_key_values=cache if use_cache else None)
            if return_dict is False:
                return out.to_tuple()
            return out

        def prepare_inputs_for_generation(self, input_ids, past_key_values=None,
                                          attention_mask=None, inputs_embeds=None,
                                          use_cache=True, **kwargs):
            seen = past_key_values.get_seq_length() if past_key_values is not None else 0
            if seen > 0:
                inputs = {"input_ids": input_ids[:, seen:]}
            elif inputs_embeds is not None:
                inputs = {"inputs_embeds": inputs_embeds}
            else:
                inputs = {"input_ids": input_ids}
            inputs.update(past_key_values=past_key_values, attention_mask=attention_mask,
                          use_cache=use_cache)
            if "logits_to_keep" in kwargs:
                inputs["logits_to_keep"] = kwargs["logits_to_keep"]
            return inputs

    HybridForCausalLM.__name__ = HybridForCausalLM.__qualname__ = (
        "Hybridize" + _FAMILIES[family] + "ForCausalLM")
    return HybridForCausalLM


# One config and one model class per teacher family; config.json's auto_map names the pair of
# the teacher's model_type. The config classes only rename the family's (model_type unchanged,
# so hybridize reads the same file).
try:
    from transformers import LlamaConfig

    class HybridizeLlamaConfig(LlamaConfig):
        pass

    HybridizeLlamaForCausalLM = _causal_lm_class("llama", HybridizeLlamaConfig)
except ImportError:
    pass

try:
    from transformers import Qwen2Config

    class HybridizeQwen2Config(Qwen2Config):
        pass

    HybridizeQwen2ForCausalLM = _causal_lm_class("qwen2", HybridizeQwen2Config)
except ImportError:
    pass

try:
    from transformers import Qwen3Config

    class HybridizeQwen3Config(Qwen3Config):
        pass

    HybridizeQwen3ForCausalLM = _causal_lm_class("qwen3", HybridizeQwen3Config)
except ImportError:
    pass

try:
    from transformers import MistralConfig

    class HybridizeMistralConfig(MistralConfig):
        pass

    HybridizeMistralForCausalLM = _causal_lm_class("mistral", HybridizeMistralConfig)
except ImportError:
    pass
