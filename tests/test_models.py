"""The model registry: parameter counts against the paper, every family forward and backward,
the paper's Table 4-5 students, options and errors, and cnn-small learning sklearn's digits."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from engine import catalog
from engine import models as M
from engine import param_counts
from engine.models.densenet import Transition



def paper_row(name):
    ours = M.param_count(name, param_counts.PAPER_NUM_CLASSES[name]) / 1e6
    paper = param_counts.PAPER_PARAMS[name]
    print(f"{name:30s} ours {ours:7.2f} M   paper {paper:6.2f} M   {100 * (ours / paper - 1):+6.1f}%")
    return ours, paper


def test_wrn_counts_within_3_percent_of_paper():
    for name in ("wrn-28-1", "wrn-28-2", "wrn-28-5", "wrn-28-10"):
        ours, paper = paper_row(name)
        assert abs(ours / paper - 1) < 0.03, name


def densenet_bc_count(depth, growth, classes, compression=0.5):
    """DenseNet-BC parameters written out from the documented layout (3 blocks of
    (depth - 4) // 6 bottleneck layers, stem 2 * growth), independently of the module code."""
    c = 2 * growth
    total = 3 * 9 * c                                   # stem conv
    for b in range(3):
        for _ in range((depth - 4) // 6):
            total += 2 * c + c * 4 * growth             # BN, conv1x1
            total += 2 * 4 * growth + 9 * 4 * growth * growth   # BN, conv3x3
            c += growth
        if b < 2:
            total += 2 * c + c * int(c * compression)   # transition BN, conv1x1
            c = int(c * compression)
    return total + 2 * c + c * classes + classes        # final BN, head


# Tolerance against the paper's Table 2 counts (100 classes), as stated in densenet.py.
DENSENET_PAPER_TOLERANCE = {"densenet-bc-112-33": 0.12, "densenet-bc-90-60": 0.07,
                            "densenet-bc-80-80": 0.07, "densenet-bc-80-120": 0.07}


def test_densenet_counts_follow_the_documented_layout_and_sit_near_the_paper():
    for name, tol in DENSENET_PAPER_TOLERANCE.items():
        _, opts = catalog.resolve_model(name)
        assert M.param_count(name, 100) == densenet_bc_count(opts["depth"], opts["growth"], 100)
        assert M.param_count(name, 10) == densenet_bc_count(opts["depth"], opts["growth"], 10)
        ours, paper = paper_row(name)
        assert abs(ours / paper - 1) < tol, name


TABLE4 = [n for n in param_counts.PAPER_PARAMS if n.startswith("densenet-bc-90-60-")]
TABLE5 = [n for n in param_counts.PAPER_PARAMS if n.startswith("ban-")]


def test_table4_counts_order_like_the_paper():
    counts = {n: paper_row(n)[0] for n in ["densenet-bc-90-60"] + TABLE4}
    c = lambda v: counts[f"densenet-bc-90-60-{v}"]  # noqa: E731
    teacher = counts["densenet-bc-90-60"]
    # fewer, thinner layers or more, narrower ones: the paper's order 21.2 > 16.1 > 13.7 > 12.9 > 12.6
    assert c("depth0.5") > teacher > c("depth2") > c("depth3") > c("depth4")
    # compression x0.5 and x0.75 are smaller than the teacher, x1.5 larger (5.1, 10.1 < 16.1 < 80.5)
    assert c("comp0.5") < c("comp0.75") < teacher < c("comp1.5")
    for v in ("depth0.5", "depth2", "depth3", "depth4"):   # stated tolerance: 10%
        assert abs(c(v) / param_counts.PAPER_PARAMS[f"densenet-bc-90-60-{v}"] - 1) < 0.10, v


def test_table5_counts():
    for name in TABLE5:
        ours, paper = paper_row(name)
        # stated tolerance: the wide ratio-1 rows fix the stage widths and agree to 1.5%; the
        # paper does not define its bottleneck and 0.5-ratio units, ours land within 25%
        assert abs(ours / paper - 1) < (0.015 if name.endswith("-1") and "wrn" in name else 0.25), name


def test_table4_students_keep_the_teachers_transition_stem_and_head_widths():
    with torch.device("meta"):
        teacher = M.build("densenet-bc-90-60", 100)
        widths = lambda m: [t[2].out_channels for t in m.modules() if isinstance(t, Transition)]  # noqa: E731
        assert widths(teacher) == [480, 660]
        for name in TABLE4:
            student = M.build(name, 100)
            assert widths(student) == widths(teacher), name
            assert student.stem.weight.shape == teacher.stem.weight.shape, name
            assert student.head.weight.shape == teacher.head.weight.shape, name
            assert M.count_params(student) != M.count_params(teacher), name


def check_model(model, x, num_classes):
    """Forward and backward: logits of the right shape, a finite gradient for every parameter;
    `.stem` is the first convolution and `.head` the last Linear."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert model.stem is convs[0] and model.head is linears[-1]
    model.train()
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    F.cross_entropy(out, torch.arange(x.shape[0]) % num_classes).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.stem.parameters())


SMALL = ["cnn-small", "wrn-10-1", "densenet-bc-16-8", "preact-resnet-8", "densenet-bc-16-8-depth2",
         "densenet-bc-16-8-comp0.75", "ban-wrn-1-0.5", "ban-preresnet-2-1", "airbench"]
SMALL_OPTIONS = {"ban-wrn-1-0.5": {"teacher": "densenet-bc-16-8"}, "ban-preresnet-2-1": {"teacher": "densenet-bc-16-8"},
                 "airbench": {"width": 0.25}}


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 32, 32)])
def test_every_family_trains_on_digits_and_cifar_sizes(name, shape):
    torch.manual_seed(0)
    model = M.build(name, 10, in_channels=shape[0], **SMALL_OPTIONS.get(name, {}))
    check_model(model, torch.randn(2, *shape), 10)


def test_small_variants_cover_every_image_family():
    image_families = {f.family for f in catalog.FAMILIES if f.kind == "image"}
    assert {catalog.resolve_model(n)[0].family for n in SMALL} == image_families
    assert image_families <= set(M.BUILDERS)


def test_preact_resnet_18_width_option():
    torch.manual_seed(0)
    check_model(M.build("preact-resnet-18", 10, width=0.125), torch.randn(2, 3, 16, 16), 10)
    assert M.param_count("preact-resnet-20", 10, width=2) > 3.5 * M.param_count("preact-resnet-20", 10)


@pytest.mark.parametrize("name", TABLE4 + TABLE5)
def test_paper_students_train_against_densenet_90_60(name):
    # 8x8 inputs keep this quick; the stages still reduce it to 2x2 before pooling
    torch.manual_seed(0)
    check_model(M.build(name, 100), torch.randn(2, 3, 8, 8), 100)


def test_every_listed_name_builds_with_stem_and_head():
    names = M.names()
    assert set(param_counts.PAPER_PARAMS) <= set(names)
    for name in names:
        if catalog.resolve_model(name)[0].kind != "image":
            continue
        with torch.device("meta"):
            model = M.build(name, 10)
        assert isinstance(model.stem, nn.Conv2d) and isinstance(model.head, nn.Linear), name
        assert model.head.out_features == 10 and model.model_name == name


def test_dropout_option_reaches_the_model():
    x = torch.randn(4, 3, 16, 16)
    for dropout, same in ((0.0, True), (0.5, False)):
        torch.manual_seed(0)
        model = M.build("wrn-10-1", 10, dropout=dropout).train()
        assert torch.equal(model(x), model(x)) == same


def test_bad_names_and_options_say_what_is_wrong():
    with pytest.raises(TypeError, match=r"'wrn-28-10'.*unknown option 'drop'.*dropout"):
        M.build("wrn-28-10", 10, drop=0.3)
    with pytest.raises(TypeError, match=r"'densenet-bc-90-60'.*unknown option 'width'"):
        M.build("densenet-bc-90-60", 10, width=2)
    with pytest.raises(ValueError, match=r"'wrn-28-10'.*width=10.*width=2"):
        M.build("wrn-28-10", 10, width=2)
    with pytest.raises(ValueError, match=r"'wrn-27-2'.*6n\+4.*found 27"):
        M.build("wrn-27-2", 10)
    with pytest.raises(ValueError, match=r"'preact-resnet-21'.*6n\+2.*found 21"):
        M.build("preact-resnet-21", 10)
    with pytest.raises(ValueError, match=r"'cnn-small'.*dropout in \[0, 1\).*1.5"):
        M.build("cnn-small", 10, dropout=1.5)
    with pytest.raises(ValueError, match=r"'ban-wrn-1-1'.*teacher.*DenseNet-BC.*'wrn-28-10'"):
        M.build("ban-wrn-1-1", 100, teacher="wrn-28-10")
    with pytest.raises(ValueError, match=r"'densenet-bc-90-60-comp0.1'.*block 1"):
        M.build("densenet-bc-90-60-comp0.1", 100)
    with pytest.raises(KeyError, match=r"unknown model 'resnet-50'"):
        M.build("resnet-50", 10)


def test_register_refuses_a_second_builder_for_a_family():
    with pytest.raises(ValueError, match="'wrn' already has a builder"):
        M.register("wrn")(lambda num_classes, in_channels: None)


def test_cnn_small_learns_digits():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    xtr, xte, ytr, yte = train_test_split(x, torch.tensor(digits.target), test_size=0.2, random_state=0,
                                          stratify=digits.target)
    mean, std = xtr.mean(), xtr.std()
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    torch.manual_seed(0)
    model = M.build("cnn-small", 10, in_channels=1)
    assert 20_000 <= M.count_params(model) <= 50_000
    epochs, batch = 5, 64
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * -(-len(xtr) // batch))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(xtr)).split(batch):
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        err = (model(xte).argmax(1) != yte).float().mean().item()
    print(f"cnn-small digits test error after {epochs} epochs: {err:.3%}")
    assert err < 0.05


class FP32Recurrence(torch.nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, hidden):
        with torch.autocast("cpu", enabled=False):
            return self.rnn(x.float(), hidden)


@pytest.mark.parametrize("name", SMALL + ["lstm"])
def test_logits_and_teacher_soft_targets_are_float32_under_bf16_autocast(name):
    """The body runs in bf16 under autocast; the head runs in fp32 (engine.models.fp32_head), so
    the teacher's logits and its softmax (the soft targets) keep fp32's resolution."""
    from engine.objectives import _teacher_probs
    torch.manual_seed(0)
    if name == "lstm":
        from engine.models import lm
        model = lm.BUILDERS["lstm"](50, layers=1, hidden=16).eval()
        # oneDNN has no bf16 LSTM on this CPU: the recurrence runs in fp32, the decoder
        # (embedding dropout -> Linear) under autocast as on CUDA
        model.lstm = FP32Recurrence(model.lstm)
        x = torch.randint(0, 50, (5, 3))
        run = lambda: model(x, model.init_hidden(3))[0].reshape(-1, 50)   # noqa: E731
    else:
        model = M.build(name, 10, in_channels=3, **SMALL_OPTIONS.get(name, {})).eval()
        x = torch.randn(4, 3, 16, 16)
        run = lambda: model(x)   # noqa: E731
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = run()
        probs = _teacher_probs(logits)
        body = model.head.weight.new_ones(2, 2) @ model.head.weight.new_ones(2, 2)
    assert body.dtype == torch.bfloat16            # autocast was on around the model
    assert logits.dtype == torch.float32 and probs.dtype == torch.float32
    assert not torch.equal(logits, logits.bfloat16().float())   # not bf16 values in an fp32 tensor
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-6)
