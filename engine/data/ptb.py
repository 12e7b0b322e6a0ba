"""Word-level language-model data in the Penn Treebank format (Mikolov's split).

`root` holds `ptb.train.txt`, `ptb.valid.txt` and `ptb.test.txt`, each plain or gzip-compressed
(`.txt.gz`): one sentence a line, words separated by white space. Any corpus in that form works.

- Tokens: the words of each line followed by `<eos>`.
- Vocabulary: the training split's types, ids by first occurrence in the training stream (so ids
  are deterministic and `<eos>` is the id of the first line end). PTB gives 10,000 types.
- A validation or test word outside the vocabulary becomes `<unk>` when the vocabulary has one,
  otherwise it is an error naming the file and the word.
- Batches: each split is one stream cut into `batch_size` contiguous columns (`batchify`, the
  tail that does not fill a row is dropped), read in truncated-BPTT windows of `bptt` time steps
  (`windows`). A model carries its hidden state from one window to the next.

Data-set options (`dataset.options`): `bptt` (35), `train_tokens` (use only the first N tokens of
the training stream, for CPU-sized runs; the vocabulary still comes from the whole split).
"""
from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = {"train": "ptb.train.txt", "val": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS, UNK = "<eos>", "<unk>"
OPTIONS = {"bptt": 1, "train_tokens": 2}   # dataset.options and their least values


@dataclass
class Corpus:
    vocab: list[str]             # id -> word
    train: torch.Tensor          # int64 token streams
    val: torch.Tensor
    test: torch.Tensor
    bptt: int = 35
    name: str = "ptb"
    kind: str = "lm"

    @property
    def num_classes(self) -> int:
        return len(self.vocab)


def split_path(root: Path, name: str) -> Path:
    """The plain file if present, else the `.gz` one; a clear error when neither exists."""
    plain = Path(root) / name
    for p in (plain, plain.with_name(name + ".gz")):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{plain}: language-model data not found (expected {name} or {name}.gz "
                            f"in dataset.root {str(root)!r})")


def read_tokens(path: Path) -> list[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [w for line in f for w in line.split() + [EOS]]


def build_vocab(tokens: list[str]) -> list[str]:
    return list(dict.fromkeys(tokens))   # types in order of first occurrence


def encode(tokens: list[str], index: dict[str, int], path: Path) -> torch.Tensor:
    unk = index.get(UNK)
    ids = []
    for w in tokens:
        i = index.get(w, unk)
        if i is None:
            raise ValueError(f"{path}: word {w!r} is not in the training vocabulary and the vocabulary "
                             f"has no {UNK!r} to map it to")
        ids.append(i)
    return torch.tensor(ids, dtype=torch.long)


def load(dataset, seed: int = 0) -> Corpus:
    """A `Corpus` from a `spec.Dataset` (root, options bptt and train_tokens). `seed` is unused:
    language-model batches are contiguous streams, in order, every epoch."""
    if not dataset.root:
        raise ValueError(f"dataset.root: expected the directory holding {SPLITS['train']}, found none")
    opts = dict(dataset.options or {})
    for key in opts:
        if key not in OPTIONS:
            raise ValueError(f"dataset.options.{key}: unknown option for data set {dataset.name!r}; "
                             f"expected one of: {', '.join(OPTIONS)}")
    for key, lo in OPTIONS.items():
        v = opts.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise ValueError(f"dataset.options.{key}: expected an integer >= {lo}, found {v!r}")
    bptt = opts.get("bptt", 35)
    root = Path(dataset.root).expanduser()
    paths = {k: split_path(root, name) for k, name in SPLITS.items()}
    tokens = {k: read_tokens(p) for k, p in paths.items()}
    vocab = build_vocab(tokens["train"])
    index = {w: i for i, w in enumerate(vocab)}
    streams = {k: encode(t, index, paths[k]) for k, t in tokens.items()}
    if opts.get("train_tokens"):
        streams["train"] = streams["train"][:opts["train_tokens"]]
    return Corpus(vocab, streams["train"], streams["val"], streams["test"], bptt)


def batchify(stream: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[L, batch_size]: column b is the contiguous piece stream[b*L:(b+1)*L]."""
    length = stream.numel() // batch_size
    if length < 2:
        raise ValueError(f"a stream of {stream.numel()} tokens is too short for {batch_size} columns "
                         "(each needs at least 2 tokens)")
    return stream[:length * batch_size].view(batch_size, length).t().contiguous()


def windows(columns: torch.Tensor, bptt: int):
    """Yields (inputs [t, B], targets [t, B]) with t <= bptt; targets are the inputs shifted by one
    step, so every token of a column but the first is predicted exactly once, in order."""
    for i in range(0, columns.size(0) - 1, bptt):
        t = min(bptt, columns.size(0) - 1 - i)
        yield columns[i:i + t], columns[i + 1:i + 1 + t]


def predicted_tokens(columns: torch.Tensor) -> torch.Tensor:
    """The targets of all windows in stream order (column by column): what per-token test
    probabilities are aligned to."""
    return columns[1:].t().reshape(-1)
