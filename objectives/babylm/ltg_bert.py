"""LTG-BERT (Samuel et al. 2023, the BabyLM 2023 winner) as a transformers masked-LM model.

What differs from BERT (TASKS.md 3.1, read in ltgoslo/ltg-bert ``babylm/train/model.py``):
- no absolute position and no token-type embeddings: word embedding -> LayerNorm (no affine) ->
  dropout;
- disentangled attention (DeBERTa-style) over log-bucketed relative positions, with ONE relative
  embedding table ``[2 * position_bucket_size - 1, hidden]`` shared by every layer and projected
  by each layer's own query/key projection: score = q.k + q.k_pos + k.q_pos, scaled by
  1/sqrt(3 * head_size);
- NormFormer-like extra norms: attention = LayerNorm (no affine) -> projections -> output
  projection -> LayerNorm (affine) -> dropout; feed-forward = LayerNorm (no affine) -> Linear to
  2 x intermediate (no bias) -> GEGLU -> LayerNorm (no affine) -> Linear back (no bias) -> dropout;
  no final encoder LayerNorm;
- truncated-normal init with std sqrt(2 / (5 * hidden)); the feed-forward weights of layer i are
  further scaled by sqrt(1 / (2 * (1 + i)));
- MLM head: LayerNorm -> Linear -> GELU -> LayerNorm -> dropout -> Linear tied to the word
  embeddings (zero bias), evaluated only where there is something to predict.

The file imports only torch and transformers, so ``save_pretrained`` can ship it as remote code:
a saved checkpoint loads anywhere with ``AutoModelForMaskedLM.from_pretrained(dir,
trust_remote_code=True)``, and here (after importing this module) without it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import MaskedLMOutput

#: The published configurations (ltg-bert ``babylm/configs/{xs,small,base}.json``).
PRESETS: dict[str, dict[str, int]] = {
    "xs": {"num_hidden_layers": 12, "hidden_size": 192, "num_attention_heads": 3, "intermediate_size": 512},
    "small": {"num_hidden_layers": 12, "hidden_size": 384, "num_attention_heads": 6, "intermediate_size": 1024},
    "base": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12, "intermediate_size": 2048},
}


class LtgBertConfig(PreTrainedConfig):
    model_type = "ltg_bert"

    vocab_size: int = 16384
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 2048
    max_position_embeddings: int = 512  # relative distances beyond this share the farthest bucket
    position_bucket_size: int = 32
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-7
    pad_token_id: int | None = 3  # the WordPiece specials: [UNK] [CLS] [SEP] [PAD] [MASK] [PAR] [TAB]
    tie_word_embeddings: bool = True

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LtgBertConfig:
        """A published size (xs, small, base) with some fields replaced (vocab_size, dropout, ...)."""
        if name not in PRESETS:
            raise ValueError(f"unknown LTG-BERT size {name!r} (presets: {', '.join(PRESETS)})")
        return cls(**{**PRESETS[name], **overrides})


def relative_position_buckets(length: int, bucket_size: int, max_position: int) -> torch.Tensor:
    """Row = query, column = key: the index into the relative table of distance ``query - key``.

    Distances up to ``bucket_size // 2`` get their own bucket; longer ones share buckets whose
    width grows logarithmically up to ``max_position``; the result lies in [0, 2 * bucket_size - 2].
    """
    distance = torch.arange(length).unsqueeze(1) - torch.arange(length).unsqueeze(0)
    mid = bucket_size // 2
    far = distance.abs().clamp(min=mid, max=max_position - 1)
    log_bucket = torch.ceil(torch.log(far / mid) / math.log((max_position - 1) / mid) * (mid - 1)).long() + mid
    bucket = torch.where(distance.abs() <= mid, distance, log_bucket * distance.sign())
    return bucket + bucket_size - 1


class LtgEmbedding(nn.Module):
    def __init__(self, config: LtgBertConfig) -> None:
        super().__init__()
        self.word_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.relative_embedding = nn.Parameter(torch.empty(2 * config.position_bucket_size - 1, config.hidden_size))
        self.relative_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        words = self.dropout(self.word_layer_norm(self.word_embedding(input_ids)))
        return words, self.relative_layer_norm(self.relative_embedding)


class LtgAttention(nn.Module):
    def __init__(self, config: LtgBertConfig) -> None:
        super().__init__()
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"hidden_size {config.hidden_size} is not a multiple of "
                             f"num_attention_heads {config.num_attention_heads}")
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.scale = 1.0 / math.sqrt(3 * self.head_size)  # three score terms, each ~ unit variance
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.in_proj_qk = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.in_proj_v = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.attention_probs_dropout_prob)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_size)).transpose(-3, -2)  # [..., T, D] -> [..., H, T, d]

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor, relative: torch.Tensor,
                buckets: torch.Tensor) -> torch.Tensor:
        batch, length, _ = hidden.shape
        x = self.pre_layer_norm(hidden)
        query, key = (self._heads(t) for t in self.in_proj_qk(x).chunk(2, dim=-1))  # [B, H, T, d]
        value = self._heads(self.in_proj_v(x))
        # The shared relative table through this layer's own query/key projection: [H, R, d].
        query_pos, key_pos = (self._heads(t) for t in self.in_proj_qk(self.dropout(relative)).chunk(2, dim=-1))
        index = buckets.expand(batch, self.num_heads, length, length)
        # content -> position: q_i . k_pos[bucket(i - j)];  position -> content: k_j . q_pos[bucket(i - j)]
        c2p = torch.matmul(query, key_pos.transpose(-1, -2)).gather(3, index)
        p2c = torch.matmul(key, query_pos.transpose(-1, -2)).transpose(-1, -2).gather(2, index)
        bias = ((c2p + p2c) * self.scale).masked_fill(padding[:, None, None, :], float("-inf"))
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=bias.to(query.dtype), scale=self.scale,
                                                 dropout_p=self.dropout.p if self.training else 0.0)
        context = self.out_proj(context.transpose(1, 2).flatten(2))
        return self.dropout(self.post_layer_norm(context))


class GeGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = x.chunk(2, dim=-1)
        return x * F.gelu(gate, approximate="tanh")


class LtgFeedForward(nn.Module):
    def __init__(self, config: LtgBertConfig, layer_index: int) -> None:
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.up = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.activation = GeGLU()
        self.mid_layer_norm = nn.LayerNorm(config.intermediate_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        for linear in (self.up, self.down):  # read by _init_weights: deeper layers start smaller
            linear.init_scale = math.sqrt(1.0 / (2.0 * (1 + layer_index)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_layer_norm(self.activation(self.up(self.pre_layer_norm(x))))
        return self.dropout(self.down(x))


class LtgLayer(nn.Module):
    def __init__(self, config: LtgBertConfig, layer_index: int) -> None:
        super().__init__()
        self.attention = LtgAttention(config)
        self.feed_forward = LtgFeedForward(config, layer_index)

    def forward(self, hidden: torch.Tensor, padding: torch.Tensor, relative: torch.Tensor,
                buckets: torch.Tensor) -> torch.Tensor:
        hidden = hidden + self.attention(hidden, padding, relative, buckets)
        return hidden + self.feed_forward(hidden)


class LtgMaskHead(nn.Module):
    def __init__(self, config: LtgBertConfig) -> None:
        super().__init__()
        self.pre_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.GELU()
        self.post_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps, elementwise_affine=False)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)  # weight tied to the word embeddings
        self.decoder.tied = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post_layer_norm(self.activation(self.dense(self.pre_layer_norm(x))))
        return self.decoder(self.dropout(x))


class LtgBertForMaskedLM(PreTrainedModel):
    config_class = LtgBertConfig
    config: LtgBertConfig
    base_model_prefix = "ltg_bert"
    _tied_weights_keys = {"classifier.decoder.weight": "embedding.word_embedding.weight"}
    _no_split_modules = ["LtgLayer"]

    def __init__(self, config: LtgBertConfig) -> None:
        super().__init__(config)
        self.embedding = LtgEmbedding(config)
        self.layers = nn.ModuleList(LtgLayer(config, i) for i in range(config.num_hidden_layers))
        self.classifier = LtgMaskHead(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding.word_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding.word_embedding = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.classifier.decoder

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.classifier.decoder = value

    def no_weight_decay(self) -> set[str]:
        """Parameter names kept out of weight decay, as in the published training: biases, layer
        norms and embeddings (timm's convention, which the shared engine honours)."""
        return {n for n, _ in self.named_parameters() if any(s in n for s in ("bias", "layer_norm", "embedding"))}

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = math.sqrt(2.0 / (5.0 * self.config.hidden_size))

        def trunc_normal(weight: torch.Tensor, scale: float = 1.0) -> None:
            init.trunc_normal_(weight, mean=0.0, std=std * scale, a=-2 * std * scale, b=2 * std * scale)

        # transformers visits the modules that own parameters directly, so each rule is on one.
        if isinstance(module, nn.Linear):
            if not getattr(module, "tied", False):  # the head's decoder weight is the word embedding
                trunc_normal(module.weight, getattr(module, "init_scale", 1.0))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            trunc_normal(module.weight)
        elif isinstance(module, LtgEmbedding):
            trunc_normal(module.relative_embedding)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            init.ones_(module.weight)
            init.zeros_(module.bias)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual embeddings ``[batch, length, hidden]``; ``attention_mask`` is 1 on real tokens."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        padding = attention_mask == 0
        length = input_ids.shape[1]
        buckets = relative_position_buckets(length, self.config.position_bucket_size,
                                            self.config.max_position_embeddings)
        # Short sequences use only the middle rows of the relative table: project just those.
        low, high = int(buckets.min()), int(buckets.max())
        hidden, relative = self.embedding(input_ids)
        relative, buckets = relative[low:high + 1], (buckets - low).to(input_ids.device)
        for layer in self.layers:
            hidden = layer(hidden, padding, relative, buckets)
        return hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> MaskedLMOutput:
        """Without ``labels``: logits ``[batch, length, vocab]``. With ``labels`` (-100 = nothing to
        predict) the head runs only at the labelled positions, as in the published training:
        ``loss`` is their mean cross-entropy and ``logits`` holds their rows ``[n_labelled, vocab]``."""
        hidden = self.encode(input_ids, attention_mask)
        if labels is None:
            return MaskedLMOutput(logits=self.classifier(hidden))
        picked = labels != -100
        logits = self.classifier(hidden[picked])
        return MaskedLMOutput(loss=F.cross_entropy(logits.float(), labels[picked]), logits=logits)

    def logits_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                  positions: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, vocab]`` at one position per sequence (pseudo-log-likelihood scoring)."""
        hidden = self.encode(input_ids, attention_mask)
        return self.classifier(hidden[torch.arange(len(positions), device=hidden.device), positions])


AutoConfig.register(LtgBertConfig.model_type, LtgBertConfig, exist_ok=True)
AutoModelForMaskedLM.register(LtgBertConfig, LtgBertForMaskedLM, exist_ok=True)
LtgBertConfig.register_for_auto_class()
LtgBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
