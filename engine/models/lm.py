"""Word-level language models for the Penn Treebank experiments of the BAN paper (section 4.3).

Both models take time-major token ids and carry their recurrent state:
`forward(tokens [T, B], hidden) -> (logits [T, B, V], hidden)` and `init_hidden(batch_size)`.

- `WordLSTM`: Zaremba et al. 2014, "Recurrent neural network regularization": embedding, a
  stacked LSTM, dropout on the non-recurrent connections, a linear softmax layer; optionally the
  input and output embeddings are tied (Press & Wolf 2017). Sizes: small 2x200 (no dropout),
  medium 2x650 (dropout 0.5), large 2x1500 (dropout 0.65); the BAN paper's 52 M-parameter model
  is the tied 2x1500 one (51.0 M with a 10,000-word vocabulary).
- `CharCNNLSTM`: Kim et al. 2016, "Character-aware neural language models": each word is spelled
  as characters (with start- and end-of-word marks), embedded, convolved with filters of widths
  1..7 (max over time, tanh), passed through highway layers and fed to a 2-layer LSTM; the output
  is still a softmax over words. Large (LSTM 2x650, 1,100 filters, 2 highway layers): 19.4 M
  parameters; small (2x300, widths 1..6, 525 filters, 1 highway layer): 5.3 M.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.models.common import fp32_head

# Zaremba et al.'s per-size settings, used when the name gives one of their sizes.
ZAREMBA = {200: dict(dropout=0.0, init_range=0.1), 650: dict(dropout=0.5, init_range=0.05),
           1500: dict(dropout=0.65, init_range=0.04)}


class WordLSTM(nn.Module):
    def __init__(self, vocab_size, layers=2, hidden=200, dropout=None, tied=False, init_range=None):
        super().__init__()
        paper = ZAREMBA.get(hidden, dict(dropout=0.0, init_range=0.1))
        self.layers, self.hidden = layers, hidden
        self.embed = nn.Embedding(vocab_size, hidden)
        self.drop = nn.Dropout(paper["dropout"] if dropout is None else dropout)
        self.lstm = nn.LSTM(hidden, hidden, layers, dropout=self.drop.p if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, vocab_size)
        r = paper["init_range"] if init_range is None else init_range
        for p in self.parameters():
            nn.init.uniform_(p, -r, r)
        if tied:  # one matrix both reads and writes words
            self.head.weight = self.embed.weight

    def init_hidden(self, batch_size):
        w = self.head.weight
        return tuple(w.new_zeros(self.layers, batch_size, self.hidden) for _ in range(2))

    def forward(self, tokens, hidden):
        x = self.drop(self.embed(tokens))
        y, hidden = self.lstm(x, hidden)
        return fp32_head(self.head, self.drop(y)), hidden


def spell(vocab: list[str], max_len: int | None = None, min_len: int = 0) -> torch.Tensor:
    """[V, L] character ids of every word: 1 starts a word, 2 ends it, 0 pads; a special token
    such as `<unk>` or `<eos>` is one character of its own (as in Kim et al.'s code). L is the
    longest spelling (cut to max_len), at least min_len (the widest filter must fit)."""
    words = [[w] if w.startswith("<") and w.endswith(">") else list(w) for w in vocab]
    chars = {c: i + 3 for i, c in enumerate(sorted({c for w in words for c in w}))}
    length = max(len(w) for w in words) + 2
    length = max(min_len, length if max_len is None else min(length, max_len))
    out = torch.zeros(len(words), length, dtype=torch.long, device="cpu")   # real, even under a meta device
    for i, w in enumerate(words):
        ids = [1] + [chars[c] for c in w][:length - 2] + [2]
        out[i, :len(ids)] = torch.tensor(ids, device="cpu")
    return out


class Highway(nn.Module):
    """y = g * relu(W x) + (1 - g) * x, with the gate g = sigmoid(W_g x + b_g), b_g = -2."""

    def __init__(self, size, layers):
        super().__init__()
        self.transform = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        self.gate = nn.ModuleList(nn.Linear(size, size) for _ in range(layers))
        for g in self.gate:  # start by carrying the input through (Srivastava et al. 2015)
            nn.init.constant_(g.bias, -2.0)

    def forward(self, x):
        for t, g in zip(self.transform, self.gate):
            gate = torch.sigmoid(g(x))
            x = gate * F.relu(t(x)) + (1 - gate) * x
        return x


class CharCNNLSTM(nn.Module):
    def __init__(self, vocab, layers=2, hidden=650, char_embed=15, widths=7, filters_per_width=50,
                 max_filters=200, highway=2, dropout=0.5, max_word_len=None, init_range=0.05):
        super().__init__()
        self.layers, self.hidden = layers, hidden
        self.register_buffer("chars", spell(vocab, max_word_len, min_len=widths))
        self.char_embed = nn.Embedding(int(self.chars.max()) + 1, char_embed, padding_idx=0)
        sizes = [min(max_filters, filters_per_width * w) for w in range(1, widths + 1)]
        self.convs = nn.ModuleList(nn.Conv1d(char_embed, n, w) for w, n in zip(range(1, widths + 1), sizes))
        self.highway = Highway(sum(sizes), highway)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(sum(sizes), hidden, layers, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, len(vocab))
        for name, p in self.named_parameters():
            if not name.startswith("highway.gate") or "weight" in name:
                nn.init.uniform_(p, -init_range, init_range)
        nn.init.zeros_(self.char_embed.weight[0].data)   # the padding character stays zero

    def init_hidden(self, batch_size):
        w = self.head.weight
        return tuple(w.new_zeros(self.layers, batch_size, self.hidden) for _ in range(2))

    def words(self, tokens):
        """[N] word ids -> [N, filters]: convolutions over the spelling, max over time."""
        x = self.char_embed(self.chars[tokens]).transpose(1, 2)        # [N, char_embed, L]
        x = torch.cat([torch.tanh(conv(x)).amax(dim=2) for conv in self.convs], dim=1)
        return self.highway(x)

    def forward(self, tokens, hidden):
        x = self.words(tokens.reshape(-1)).view(*tokens.shape, -1)
        y, hidden = self.lstm(self.drop(x), hidden)
        return fp32_head(self.head, self.drop(y)), hidden


# Builders by catalog family: (num_classes = vocabulary size, options from the name and config).
def build_lstm(num_classes, layers=2, hidden=200, tied=False, vocab=None, **options):
    return WordLSTM(num_classes, layers, hidden, tied=tied, **options)


def build_lstm_tied(num_classes, layers=2, hidden=1500, vocab=None, **options):
    return WordLSTM(num_classes, layers, hidden, tied=True, **options)


# Kim et al.'s two configurations; the large CNN goes with the 650-unit LSTM.
KIM_SMALL = dict(widths=6, filters_per_width=25, highway=1)
KIM_LARGE = dict(widths=7, filters_per_width=50, highway=2)


def build_char_cnn_lstm(num_classes, layers=2, hidden=650, vocab=None, **options):
    if vocab is None and torch.empty(0).device.type == "meta":
        # only counting parameters (`ban models`): any spelling of num_classes words will do
        vocab = [f"w{i}" for i in range(num_classes)]
    if vocab is None or len(vocab) != num_classes:
        raise ValueError("char-cnn-lstm: expected the data set's vocabulary (vocab=...) to spell its "
                         f"words, found {'none' if vocab is None else f'{len(vocab)} words for {num_classes} classes'}")
    return CharCNNLSTM(vocab, layers, hidden, **{**(KIM_LARGE if hidden >= 650 else KIM_SMALL), **options})


BUILDERS = {"lstm": build_lstm, "lstm-tied": build_lstm_tied, "char-cnn-lstm": build_char_cnn_lstm}
