"""D2E2S, rebuilt: a dual-channel (syntactic + semantic) span model for ASTE.

After Zhao, Zhou and Xu, "Dual Encoder: Exploiting the Potential of Syntactic and Semantic for
Aspect Sentiment Triplet Extraction" (LREC-COLING 2024; code TYZY89/D2E2S). The pipeline, on words:

1. encoder (any HF ``AutoModel``) over ``[CLS] sub-tokens [SEP]``; each word's feature is its
   **first sub-token** (explicit indices, not the published off-by-one arithmetic);
2. a BiLSTM over the word features (``hidden_dim`` per direction, ``lstm_layers``,
   ``drop_out_rate``), projected back to the encoder's width;
3. a syntactic GCN over the dependency graph and a semantic GCN over a graph the model attends
   for itself (``attention_heads`` heads), each ``num_layers`` deep and ``gcn_dim`` wide with
   ``gcn_dropout``, applied to the encoder features and to the BiLSTM features (shared weights);
4. fusion (the published "TIN"): a residual MLP+LayerNorm block per channel on encoder + channel,
   the syntactic and semantic halves concatenated, a BiLSTM and an MLP+LayerNorm, then a
   parameter-free self-attention with a residual;
5. a span classifier over every span of 1..``max_span_size`` words: [CLS, max-pooled span, width
   embedding] -> {none, aspect, opinion};
6. a triplet classifier over (aspect, opinion) span pairs: [max-pool of the words between them,
   both spans, both widths] -> one sigmoid per polarity.

Every width follows ``encoder.config.hidden_size`` (768 for bert-base, 384 for MiniLM); nothing
is fixed at 768. Differences from the published code, on purpose:
- all four fused channels reach the output (the published TIN computes the two encoder-side
  blocks and then drops them);
- its graph-divergence loss term is left out: it passes through ``math.log``, which turns it into
  a Python float, so it adds a constant to the loss and no gradient;
- padded words never enter an LSTM (packed sequences) or an attention row;
- pairs are (aspect-typed span, opinion-typed span) only, and a pair yields at most one triplet
  (its most probable polarity, if above ``sen_filter_threshold``): gold never has two.
Span enumeration and pair scoring are tensor operations over the whole batch; Python loops run
over widths (at most ``max_span_size``) and sparse-table levels (log2 of the sentence length).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SPAN_TYPES = ("none", "aspect", "opinion")
POLARITIES = ("POSITIVE", "NEGATIVE", "NEUTRAL")
IGNORE = -100  # span label of a span that is not a training sample


@dataclass(frozen=True, kw_only=True)
class D2E2SConfig:
    max_span_size: int = 8
    size_embedding: int = 25  # width-embedding size
    drop_out_rate: float = 0.5  # BiLSTM input, between its layers, and its output
    prop_drop: float = 0.1  # span and triplet classifier inputs
    gcn_dropout: float = 0.1  # between GCN layers and on the semantic attention
    hidden_dim: int | None = None  # BiLSTM width per direction; None: hidden_size // 2
    gcn_dim: int | None = None  # GCN width; None: hidden_size
    attention_heads: int = 1  # semantic graph heads; must divide hidden_size
    num_layers: int = 2  # GCN layers (both GCNs)
    lstm_layers: int = 2
    sen_filter_threshold: float = 0.4  # inference: polarity probability a triplet needs
    sampling_limit: int = 100  # inference: most candidate pairs scored per sentence

    def check(self, hidden_size: int) -> None:
        """Raise ValueError (one line) on a setting that cannot build a model."""
        positive = {"max_span_size": self.max_span_size, "size_embedding": self.size_embedding,
                    "attention_heads": self.attention_heads, "num_layers": self.num_layers,
                    "lstm_layers": self.lstm_layers, "sampling_limit": self.sampling_limit,
                    **{n: getattr(self, n) for n in ("hidden_dim", "gcn_dim") if getattr(self, n) is not None}}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1, not {value}")
        for name in ("drop_out_rate", "prop_drop", "gcn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), not {getattr(self, name)}")
        if hidden_size % self.attention_heads:
            raise ValueError(f"attention_heads ({self.attention_heads}) must divide the encoder's hidden size "
                             f"({hidden_size}) that the semantic attention splits")


@dataclass
class D2E2SOutput:
    loss: torch.Tensor | None
    span_logits: torch.Tensor  # [B, N, S, 3]
    pair_logits: torch.Tensor | None  # [P, 3]


@dataclass
class Extraction:
    """What the model found in a batch, as tensors; ``spans`` index the flat span grid."""

    span_types: torch.Tensor  # [B, N*S] 0 none / 1 aspect / 2 opinion (0 for invalid spans)
    pairs: torch.Tensor  # [P, 3] (sentence, aspect span, opinion span) of the kept triplets
    polarities: torch.Tensor  # [P] index into POLARITIES
    max_span_size: int

    def spans(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(start, end) word offsets, end exclusive, of flat span-grid indices."""
        start = flat // self.max_span_size
        return start, start + flat % self.max_span_size + 1


# --- graph convolutions ------------------------------------------------------------------------


class SyntacticGCN(nn.Module):
    """``relu((W(A·x) + W(x)) / (degree + 1))`` per layer over the dependency graph ``A``."""

    def __init__(self, in_dim: int, out_dim: int, *, layers: int, dropout: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(in_dim if i == 0 else out_dim, out_dim) for i in range(layers))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        denominator = adjacency.sum(-1, keepdim=True) + 1
        for i, linear in enumerate(self.layers):
            x = F.relu((linear(adjacency @ x) + linear(x)) / denominator)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
        return x


class SemanticGCN(nn.Module):
    """A GCN over an attention graph: the heads' mean of softmax(QKᵀ/√d), diagonal set to 1."""

    def __init__(self, in_dim: int, out_dim: int, *, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(in_dim, in_dim)
        self.key = nn.Linear(in_dim, in_dim)
        self.attention_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(nn.Linear(in_dim if i == 0 else out_dim, out_dim) for i in range(layers))
        self.dropout = nn.Dropout(dropout)

    def graph(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, n, width = x.shape
        q = self.query(x).view(batch, n, self.heads, -1).transpose(1, 2)
        k = self.key(x).view(batch, n, self.heads, -1).transpose(1, 2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads)
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attention = self.attention_dropout(scores.softmax(-1)).mean(1)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        return attention.masked_fill(eye, 1.0) * mask[:, :, None]

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        adjacency = self.graph(x, mask)
        denominator = adjacency.sum(-1, keepdim=True) + 1
        for i, linear in enumerate(self.layers):
            x = F.relu(linear(adjacency @ x) / denominator)
            if i < len(self.layers) - 1:
                x = self.dropout(x)
        return x


# --- fusion ------------------------------------------------------------------------------------


def packed_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Run ``lstm`` over each sentence's own words only; padding comes back as zeros."""
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, _ = lstm(packed)
    return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


class ResidualBlock(nn.Module):
    """MLP + LayerNorm on encoder features plus one channel (brought to the encoder's width)."""

    def __init__(self, channel_dim: int, hidden: int) -> None:
        super().__init__()
        self.project = nn.Linear(channel_dim, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.LayerNorm(hidden))

    def forward(self, words: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
        return self.mlp(words + self.project(channel))


class Fusion(nn.Module):
    """The published TIN: four residual blocks, syntax ⊕ semantics, BiLSTM, MLP + LayerNorm."""

    def __init__(self, gcn_dim: int, hidden: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ResidualBlock(gcn_dim, hidden) for _ in range(4))
        self.lstm = nn.LSTM(2 * hidden, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.LayerNorm(hidden))

    def forward(self, words: torch.Tensor, channels: list[torch.Tensor], lengths: torch.Tensor) -> torch.Tensor:
        syn_words, syn_lstm, sem_words, sem_lstm = (block(words, c) for block, c in zip(self.blocks, channels))
        joined = torch.cat([syn_words + syn_lstm, sem_words + sem_lstm], dim=-1)
        return self.mlp(packed_lstm(self.lstm, joined, lengths))


def self_attention(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Parameter-free dot-product attention over the sentence's words (padding masked)."""
    scores = x @ x.transpose(1, 2)
    scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
    return (scores.softmax(-1) @ x) * mask[:, :, None]


# --- span pooling --------------------------------------------------------------------------------


def span_max_pool(words: torch.Tensor, max_span_size: int) -> torch.Tensor:
    """[B, N, S, H]: the max over words i..i+w of every span (start i, width w+1).

    Built width by width as a running maximum; spans that run past a sentence are computed
    from padding (finite values) and masked by the caller.
    """
    pooled, running = [], words
    for width in range(max_span_size):
        if width:
            shifted = F.pad(words[:, width:], (0, 0, 0, width))
            running = torch.maximum(running, shifted)
        pooled.append(running)
    return torch.stack(pooled, dim=2)


def range_max(words: torch.Tensor, batch: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """[P, H]: max of ``words[batch, low:high]`` per row, zeros where the range is empty.

    A sparse table (maxima over 2^k words) answers every range with two look-ups.
    """
    n = words.shape[1]
    table = [words]
    while 2 ** len(table) <= n:
        half = 2 ** (len(table) - 1)
        previous = table[-1]
        table.append(torch.maximum(previous, F.pad(previous[:, half:], (0, 0, 0, half))))
    table = torch.stack(table)  # [levels, B, N, H]
    length = (high - low).clamp(min=1)
    level = torch.floor(torch.log2(length.float())).long()
    left = table[level, batch, low.clamp(max=n - 1)]
    right = table[level, batch, (high - 2 ** level).clamp(min=0, max=n - 1)]
    return torch.maximum(left, right) * (high > low)[:, None]


# --- the model -----------------------------------------------------------------------------------


class D2E2S(nn.Module):
    def __init__(self, encoder: nn.Module, config: D2E2SConfig) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        config.check(hidden)
        self.config = config
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused ([CLS] is read directly); an unused parameter would stall DDP
        self.encoder = encoder
        lstm_dim = config.hidden_dim or hidden // 2
        gcn_dim = config.gcn_dim or hidden
        self.lstm = nn.LSTM(hidden, lstm_dim, num_layers=config.lstm_layers, batch_first=True, bidirectional=True,
                            dropout=config.drop_out_rate if config.lstm_layers > 1 else 0.0)
        self.lstm_dropout = nn.Dropout(config.drop_out_rate)
        self.lstm_out = nn.Linear(2 * lstm_dim, hidden)
        self.syntactic = SyntacticGCN(hidden, gcn_dim, layers=config.num_layers, dropout=config.gcn_dropout)
        self.semantic = SemanticGCN(hidden, gcn_dim, layers=config.num_layers, heads=config.attention_heads,
                                    dropout=config.gcn_dropout)
        self.fusion = Fusion(gcn_dim, hidden)
        self.width_embedding = nn.Embedding(config.max_span_size, config.size_embedding)
        self.classifier_dropout = nn.Dropout(config.prop_drop)
        self.span_classifier = nn.Linear(2 * hidden + config.size_embedding, len(SPAN_TYPES))
        self.pair_classifier = nn.Linear(3 * hidden + 2 * config.size_embedding, len(POLARITIES))
        std = getattr(encoder.config, "initializer_range", 0.02)
        for name, module in self.named_modules():
            if not name.startswith("encoder") and isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    # features --------------------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_starts: torch.Tensor,
               word_mask: torch.Tensor, adjacency: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fused word features [B, N, H] and the [CLS] vector [B, H]."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words = hidden.gather(1, word_starts[:, :, None].expand(-1, -1, hidden.shape[-1]))
        lengths = word_mask.sum(1)
        lstm = self.lstm_dropout(packed_lstm(self.lstm, self.lstm_dropout(words), lengths))
        lstm = self.lstm_out(lstm)
        adjacency = adjacency.to(words.dtype)
        channels = [self.syntactic(words, adjacency), self.syntactic(lstm, adjacency),
                    self.semantic(words, word_mask), self.semantic(lstm, word_mask)]
        fused = self.fusion(words, channels, lengths)
        return fused + self_attention(fused, word_mask), hidden[:, 0]

    def span_logits(self, words: torch.Tensor, cls: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, N, S, 3] of every span, and the pooled spans [B, N, S, H]."""
        pooled = span_max_pool(words, self.config.max_span_size)
        batch, n, widths, hidden = pooled.shape
        features = torch.cat([cls[:, None, None, :].expand(-1, n, widths, -1), pooled,
                              self.width_embedding.weight[None, None].expand(batch, n, -1, -1)], dim=-1)
        return self.span_classifier(self.classifier_dropout(features)), pooled

    def pair_logits(self, words: torch.Tensor, pooled: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """Logits [P, 3] of (sentence, aspect span, opinion span) rows over the flat span grid."""
        size = self.config.max_span_size
        batch, aspect, opinion = pairs.unbind(-1)
        flat = pooled.flatten(1, 2)
        a_start, o_start = aspect // size, opinion // size
        a_end, o_end = a_start + aspect % size + 1, o_start + opinion % size + 1
        between = range_max(words, batch, torch.minimum(a_end, o_end), torch.maximum(a_start, o_start))
        features = torch.cat([between, flat[batch, aspect], flat[batch, opinion],
                              self.width_embedding(aspect % size), self.width_embedding(opinion % size)], dim=-1)
        return self.pair_classifier(self.classifier_dropout(features))

    def valid_spans(self, word_mask: torch.Tensor) -> torch.Tensor:
        """[B, N, S]: spans that lie inside their sentence."""
        n, size = word_mask.shape[1], self.config.max_span_size
        ends = torch.arange(n, device=word_mask.device)[:, None] + torch.arange(1, size + 1, device=word_mask.device)
        return ends[None] <= word_mask.sum(1)[:, None, None]

    # training --------------------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_starts: torch.Tensor,
                word_mask: torch.Tensor, adjacency: torch.Tensor, span_labels: torch.Tensor,
                pairs: torch.Tensor, pair_labels: torch.Tensor) -> D2E2SOutput:
        """Loss on the sampled spans (cross-entropy) and sampled pairs (binary, per polarity)."""
        words, cls = self.encode(input_ids, attention_mask, word_starts, word_mask, adjacency)
        span_logits, pooled = self.span_logits(words, cls)
        loss = F.cross_entropy(span_logits.flatten(0, 2).float(), span_labels.flatten(), ignore_index=IGNORE)
        pair_logits = None
        if pairs.shape[0]:
            pair_logits = self.pair_logits(words, pooled, pairs)
            loss = loss + F.binary_cross_entropy_with_logits(pair_logits.float(), pair_labels)
        return D2E2SOutput(loss=loss, span_logits=span_logits, pair_logits=pair_logits)

    # inference -------------------------------------------------------------------------------

    @torch.no_grad()
    def extract(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, word_starts: torch.Tensor,
                word_mask: torch.Tensor, adjacency: torch.Tensor) -> Extraction:
        """Typed spans, then the ``sampling_limit`` most confident (aspect, opinion) pairs per
        sentence, each kept as a triplet with its most probable polarity if that clears
        ``sen_filter_threshold``."""
        words, cls = self.encode(input_ids, attention_mask, word_starts, word_mask, adjacency)
        span_logits, pooled = self.span_logits(words, cls)
        probabilities = span_logits.float().softmax(-1).flatten(1, 2)  # [B, K, 3]
        confidence, types = probabilities.max(-1)
        types = types * self.valid_spans(word_mask).flatten(1)
        aspect = confidence * (types == 1)
        opinion = confidence * (types == 2)
        pair_confidence = (aspect[:, :, None] * opinion[:, None, :]).flatten(1)  # [B, K*K], 0: not a pair
        top, index = pair_confidence.topk(min(self.config.sampling_limit, pair_confidence.shape[1]), dim=1)
        sentence, rank = (top > 0).nonzero(as_tuple=True)
        flat = index[sentence, rank]
        k = aspect.shape[1]
        pairs = torch.stack([sentence, flat // k, flat % k], dim=1)
        probability, polarity = torch.sigmoid(self.pair_logits(words, pooled, pairs).float()).max(-1)
        keep = probability > self.config.sen_filter_threshold
        return Extraction(span_types=types, pairs=pairs[keep], polarities=polarity[keep],
                          max_span_size=self.config.max_span_size)
