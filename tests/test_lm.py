"""Language models on PTB-format text: data, models, training and the teacher -> BAN+L chain."""
import copy
import gzip
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine import catalog, checkpoint, runs, spec
from engine.data import ptb
from engine.events import read_events
from engine.models import lm
from engine.objectives import OBJECTIVES
from engine.spec import Dataset
from engine.context import Context
from engine.errors import Cancelled
from engine.generation import Resume, build_model, train_generation
from engine.tasks.lm import LanguageModel, ensemble_metrics, evaluate, ppl, train_epoch

WORDS = [f"w{i}" for i in range(24)] + ["<unk>", "N"]


def sentences(n, seed):
    """A Markov chain over WORDS: each word is mostly followed by the next one, so a model that
    reads context beats the unigram distribution by far."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        w, line = rng.randrange(len(WORDS)), []
        for _ in range(rng.randint(3, 12)):
            line.append(WORDS[w])
            w = (w + 1) % len(WORDS) if rng.random() < 0.8 else rng.randrange(len(WORDS))
        out.append(line)
    return out


def write_corpus(root: Path, n_train=600, gz=True, extra_test_word=None):
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("valid", 60, 1), ("test", 60, 2)):
        lines = sentences(n, seed)
        if split == "test" and extra_test_word:
            lines[3].append(extra_test_word)
        text = "".join(" " + " ".join(l) + " \n" for l in lines)
        name = f"ptb.{split}.txt"
        if gz and split == "train":
            with gzip.open(root / (name + ".gz"), "wt") as f:
                f.write(text)
        else:
            (root / name).write_text(text)
    return root


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("ptb"))


@pytest.fixture(scope="module")
def corpus(corpus_dir):
    return ptb.load(Dataset(name="ptb", root=str(corpus_dir), options={"bptt": 7}))


# ---- data -----------------------------------------------------------------------------------

def test_vocabulary_and_streams_are_exact(corpus_dir, corpus):
    with gzip.open(corpus_dir / "ptb.train.txt.gz", "rt") as f:
        train_tokens = " <eos> ".join(l.strip() for l in f.read().splitlines()).split() + ["<eos>"]
    first = {}
    for i, w in enumerate(train_tokens):
        first.setdefault(w, i)
    assert corpus.vocab == sorted(first, key=first.get)          # ids by first occurrence
    assert set(corpus.vocab) == set(WORDS) | {"<eos>"}
    assert [corpus.vocab[i] for i in corpus.train.tolist()] == train_tokens
    test_tokens = (corpus_dir / "ptb.test.txt").read_text().replace("\n", " <eos> ").split()
    assert [corpus.vocab[i] for i in corpus.test.tolist()] == test_tokens
    assert corpus.bptt == 7 and corpus.num_classes == len(WORDS) + 1


def test_every_token_is_predicted_once_per_epoch_in_order(corpus):
    stream, batch, bptt = corpus.train, 5, 7
    columns = ptb.batchify(stream, batch)
    length = stream.numel() // batch
    assert columns.shape == (length, batch)
    inputs = [[] for _ in range(batch)]
    targets = [[] for _ in range(batch)]
    for x, y in ptb.windows(columns, bptt):
        assert x.size(0) <= bptt and x.shape == y.shape
        for b in range(batch):
            inputs[b] += x[:, b].tolist()
            targets[b] += y[:, b].tolist()
    for b in range(batch):
        piece = stream[b * length:(b + 1) * length].tolist()     # column b: one contiguous piece
        assert inputs[b] == piece[:-1] and targets[b] == piece[1:]
    assert ptb.predicted_tokens(columns).tolist() == [t for col in targets for t in col]


def test_unknown_words_map_to_unk_or_fail_clearly(tmp_path):
    root = write_corpus(tmp_path / "a", extra_test_word="zebra")
    c = ptb.load(Dataset(name="ptb", root=str(root)))
    tokens = (root / "ptb.test.txt").read_text().replace("\n", " <eos> ").split()
    assert [c.vocab[i] for i in c.test.tolist()] == ["<unk>" if w == "zebra" else w for w in tokens]
    # without <unk> in the training split an unknown word is an error naming the file and word
    root = tmp_path / "b"
    write_corpus(root, gz=False, extra_test_word="zebra")
    for f in root.iterdir():
        f.write_text(f.read_text().replace("<unk>", "w0"))
    with pytest.raises(ValueError, match=r"ptb\.test\.txt: word 'zebra' is not in the training vocabulary"):
        ptb.load(Dataset(name="ptb", root=str(root)))


def test_missing_split_names_the_path(tmp_path):
    root = write_corpus(tmp_path / "c", gz=False)
    (root / "ptb.valid.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ptb\.valid\.txt: language-model data not found"):
        ptb.load(Dataset(name="ptb", root=str(root)))


@pytest.mark.parametrize("options,message", [({"bpt": 35}, r"dataset\.options\.bpt: unknown option .* bptt, train_tokens"),
                                             ({"bptt": 0}, r"dataset\.options\.bptt: expected an integer >= 1, found 0"),
                                             ({"train_tokens": "all"}, r"train_tokens: expected an integer >= 2, found 'all'")])
def test_bad_options_are_named(corpus_dir, options, message):
    with pytest.raises(ValueError, match=message):
        ptb.load(Dataset(name="ptb", root=str(corpus_dir), options=options))


def test_train_tokens_option_cuts_the_training_stream_only(corpus_dir, corpus):
    c = ptb.load(Dataset(name="ptb", root=str(corpus_dir), options={"train_tokens": 100}))
    assert c.vocab == corpus.vocab and c.train.tolist() == corpus.train[:100].tolist()
    assert c.test.tolist() == corpus.test.tolist()


# ---- models ---------------------------------------------------------------------------------

def lstm_params(vocab, layers, hidden, tied):
    # embedding + per layer 4 gates x (input and recurrent weights + two biases) + softmax layer
    lstm = sum(4 * hidden * (hidden + hidden + 2) for _ in range(layers))
    return vocab * hidden + lstm + (0 if tied else vocab * hidden) + vocab


@pytest.mark.parametrize("name,layers,hidden,tied", [("lstm-2x200", 2, 200, False),
                                                     ("lstm-tied-2x1500", 2, 1500, True)])
def test_zaremba_sizes_and_the_tied_52m_model(name, layers, hidden, tied):
    fam, opts = catalog.resolve_model(name)
    assert fam.kind == "lm"
    model = lm.BUILDERS[fam.family](10000, **opts)
    n = sum(p.numel() for p in model.parameters())
    assert n == lstm_params(10000, layers, hidden, tied)
    assert (model.head.weight is model.embed.weight) == tied
    if tied:
        assert 50e6 < n < 52e6       # the paper's "52 M" PTB model: 51,034,000 parameters


def test_spelling_marks_word_boundaries():
    vocab = ["ab", "<eos>", "b", "<unk>"]
    chars = lm.spell(vocab)
    ids = {c: i for i, c in enumerate(sorted({"a", "b", "<eos>", "<unk>"}), start=3)}
    assert chars.tolist() == [[1, ids["a"], ids["b"], 2], [1, ids["<eos>"], 2, 0],
                              [1, ids["b"], 2, 0], [1, ids["<unk>"], 2, 0]]


def test_char_cnn_lstm_size_and_shapes(corpus):
    fam, opts = catalog.resolve_model("char-cnn-lstm-2x650")
    vocab = [f"word{i}" for i in range(10000)]
    big = lm.BUILDERS[fam.family](10000, vocab=vocab, **opts)
    n = sum(p.numel() for p in big.parameters())
    assert 18.5e6 < n < 20e6         # Kim et al.'s large model: 19 M
    assert [c.out_channels for c in big.convs] == [50, 100, 150, 200, 200, 200, 200]
    small = lm.BUILDERS["char-cnn-lstm"](corpus.num_classes, hidden=16, vocab=corpus.vocab, filters_per_width=3)
    logits, hidden = small(corpus.train[:12].view(4, 3), small.init_hidden(3))
    assert logits.shape == (4, 3, corpus.num_classes) and hidden[0].shape == (2, 3, 16)
    with pytest.raises(ValueError, match="vocab"):
        lm.BUILDERS["char-cnn-lstm"](corpus.num_classes, hidden=16)


# ---- evaluation and training ---------------------------------------------------------------

def tiny_lstm(corpus, seed=0, init_range=0.3):
    torch.manual_seed(seed)   # (at the default init of 0.1 a model this small learns slowly)
    return lm.BUILDERS["lstm"](corpus.num_classes, layers=2, hidden=24, init_range=init_range)


def test_perplexity_is_exp_of_the_mean_token_cross_entropy_with_carried_state(corpus):
    model = tiny_lstm(corpus).eval()
    columns = ptb.batchify(corpus.val, 4)
    loss, probs = evaluate(model, columns, bptt=5, keep_probs=True)
    # independently: the whole column in one pass (what carrying the state across windows means)
    with torch.no_grad():
        logits, _ = model(columns[:-1], model.init_hidden(4))
        ce = F.cross_entropy(logits.reshape(-1, corpus.num_classes), columns[1:].reshape(-1))
    assert loss == pytest.approx(float(ce), rel=1e-5)
    assert math.exp(loss) == pytest.approx(ppl(loss))
    assert probs.dtype == np.float32 and probs.shape == ((columns.size(0) - 1) * 4,)
    assert ppl(loss) == pytest.approx(float(np.exp(-np.log(probs).mean())), rel=1e-5)
    # each stored probability is that of the actual next token, in stream order
    p = F.softmax(logits, -1).gather(-1, columns[1:].unsqueeze(-1)).squeeze(-1).t().reshape(-1)
    np.testing.assert_allclose(probs, p.numpy(), rtol=1e-4)


def test_training_carries_student_and_teacher_state_across_windows(corpus):
    """With lr 0 nothing changes, so the training pass must see exactly what one unbroken pass
    sees: the label CE of the whole column, and for ban against an identical teacher the
    teacher's entropy (both only if each model's state flows from window to window)."""
    student = tiny_lstm(corpus, init_range=0.5)      # large weights: the state matters
    teacher = copy.deepcopy(student).eval()
    columns = ptb.batchify(corpus.train[:400], 4)
    opt = torch.optim.SGD(student.parameters(), lr=0.0)
    loss, ce = train_epoch(student, columns, 6, opt, OBJECTIVES["ban"], teacher=teacher)
    with torch.no_grad():
        logits, _ = teacher(columns[:-1], teacher.init_hidden(4))
        logp = F.log_softmax(logits, -1)
        entropy = float(-(logp.exp() * logp).sum(-1).mean())
        label_ce = float(F.cross_entropy(logits.reshape(-1, corpus.num_classes), columns[1:].reshape(-1)))
    assert ce == pytest.approx(label_ce, rel=1e-5)
    assert loss == pytest.approx(entropy, rel=1e-5)
    # a reset state per window gives other numbers (well beyond the tolerance above)
    with torch.no_grad():
        reset = sum(F.cross_entropy(teacher(x, teacher.init_hidden(4))[0].reshape(-1, corpus.num_classes),
                                    y.reshape(-1), reduction="sum") for x, y in ptb.windows(columns, 6))
    assert abs(float(reset) / (columns.numel() - 4) - label_ce) > 1e-3


def unigram_ppl(corpus):
    counts = torch.bincount(corpus.train, minlength=corpus.num_classes).double()
    p = counts / counts.sum()
    return math.exp(float(-p[corpus.val].log().mean()))


def test_a_tiny_lstm_beats_the_unigram_baseline_quickly(corpus):
    model = tiny_lstm(corpus)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    columns, val = ptb.batchify(corpus.train, 8), ptb.batchify(corpus.val, 4)
    before, _ = evaluate(model, val, 7)
    for _ in range(3):
        train_epoch(model, columns, 7, opt, OBJECTIVES["ce"], grad_clip=5.0)
    after, _ = evaluate(model, val, 7)
    assert ppl(before) > unigram_ppl(corpus) > ppl(after)


def test_ensemble_perplexity_averages_next_word_probabilities():
    a = np.array([0.5, 0.1, 0.2], dtype=np.float32)
    b = np.array([0.1, 0.3, 0.2], dtype=np.float32)
    m = ensemble_metrics([a, b])
    assert m["test_ppl"] == pytest.approx(math.exp(-(math.log(0.3) + math.log(0.2) + math.log(0.2)) / 3), rel=1e-6)
    assert ensemble_metrics([a])["test_ppl"] == pytest.approx(float(np.exp(-np.log(a).mean())), rel=1e-6)
    with pytest.raises(ValueError, match="same test tokens"):
        ensemble_metrics([a, b[:2]])


# ---- the chain ------------------------------------------------------------------------------

CHAIN = """
[[experiment]]
name = "ptb-tiny"
dataset = {{ name = "ptb", root = "{root}", options = {{ bptt = 7 }} }}
model = "lstm-2x24"
model_options = {{ init_range = 0.3, dropout = 0.1 }}
epochs = {epochs}
batch_size = 8
eval_batch_size = 4
optimizer = {{ lr = 1.0, momentum = 0.0, nesterov = false, weight_decay = 0.0 }}
schedule = {{ name = "plateau", gamma = 0.25, threshold = 0.0 }}
grad_clip = 5.0
generations = 1
objective = "ban+l"
ensembles = [1]
ensemble_include_teacher = true
device = "cpu"
precision = "fp32"          # compared bit for bit: not bf16 on a bf16 CPU
"""


def test_teacher_to_ban_l_chain_through_the_engine(tmp_path, corpus_dir, corpus):
    config = tmp_path / "c.toml"
    config.write_text(CHAIN.format(root=corpus_dir, epochs=3))
    proc = subprocess.run([sys.executable, "-m", "engine", "run", str(config), "--experiment", "ptb-tiny",
                           "--runs-dir", str(tmp_path / "runs")], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    (root,) = runs.list_runs(tmp_path / "runs")
    events = read_events(root / "events.jsonl")
    state = runs.load_state(root)
    assert state.status() == "ok" and state.metric == "ppl"
    assert [(g.gen, g.role, g.objective, g.epoch, g.done) for g in state.gens.values()] == \
        [(0, "teacher", "ce", 3, True), (1, "student", "ban+l", 3, True)]
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert [(e["gen"], e["epoch"]) for e in epochs] == [(g, k) for g in (0, 1) for k in (1, 2, 3)]
    for e in epochs:
        assert e["test_ppl"] == pytest.approx(math.exp(e["test_loss"]))
        assert e["val_ppl"] == pytest.approx(math.exp(e["val_loss"]))
        assert e["tokens_per_s"] > 0 and e["lr"] > 0
    # the stored probabilities are those of the test tokens, and give each generation's test ppl
    paths = runs.RunPaths(root)
    n_test = (corpus.test.numel() // 4 - 1) * 4
    probs = [np.load(paths.gen_probs(g)) for g in (0, 1)]
    for g, p in enumerate(probs):
        assert p.shape == (n_test,) and p.dtype == np.float32
        assert float(np.exp(-np.log(p).mean())) == pytest.approx(state.gens[g].test, rel=1e-5)
    (ens,) = [e for e in events if e["kind"] == "ensemble"]
    assert ens["members"] == [0, 1]
    assert ens["test_ppl"] == pytest.approx(float(np.exp(-np.log((probs[0] + probs[1]) / 2).mean())), rel=1e-6)
    assert state.gens[1].test < unigram_ppl(corpus)   # it learnt something


def test_a_stopped_generation_resumes_with_its_hidden_state(tmp_path, corpus_dir):
    """Stopped after the first window, then continued from last.pt: the same model and numbers
    as an uninterrupted run (which needs both hidden states and the dropout RNG restored)."""
    exp = spec.loads(CHAIN.format(root=corpus_dir, epochs=1)).experiments["ptb-tiny"]

    def context(name):
        return Context(exp=exp, seed=0, paths=runs.RunPaths(tmp_path / name), device=torch.device("cpu"))

    task = LanguageModel(ptb.load(exp.dataset))
    gen = exp.generations[1]
    teacher = build_model(context("t"), exp.generations[0], task).eval()
    whole = train_generation(context("a"), gen, teacher, task)
    ctx = context("b")
    ctx.stop.set()
    with pytest.raises(Cancelled):
        train_generation(ctx, gen, teacher, task)
    resume = checkpoint.load(ctx.paths.last_checkpoint)
    assert (resume["epoch"], resume["step"]) == (0, 1)
    ctx.stop.clear()
    resumed = train_generation(ctx, gen, teacher, task, Resume(resume, started=True))
    assert resumed.final == pytest.approx(whole.final, rel=1e-6)
    np.testing.assert_allclose(resumed.test_probs, whole.test_probs, rtol=1e-6)
    # the fit criterion: the training stream in eval mode, hidden state carried, computed here
    model, columns = whole.model.eval(), ptb.batchify(task.data.train, gen.training.batch_size)
    hidden, nll, n = model.init_hidden(columns.size(1)), 0.0, 0
    with torch.no_grad():
        for x, y in ptb.windows(columns, task.data.bptt):
            logits, hidden = model(x, hidden)
            nll += F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
            n += y.numel()
    assert whole.final["train_eval_loss"] == pytest.approx(nll / n, rel=1e-5)
    assert whole.final["train_eval_ppl"] == pytest.approx(math.exp(nll / n), rel=1e-5)
