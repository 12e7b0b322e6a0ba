"""BAN objectives: losses, their logit gradients (eq. 5-7), CWTM (eq. 9-10), DKPP (eq. 11).

Expected values are computed here by hand from softmaxes (float64), independently of the module.
"""
import math
import re

import pytest
import torch

from engine import catalog
from engine.objectives import (OBJECTIVES, diagnostics, dkpp_permute, summarize_diagnostics,
                               teacher_confidence_weights)

N, C = 16, 7
ALL_OPTIONS = {"ce": {}, "ban": {"temperature": 2.0}, "ban+l": {"temperature": 3.0, "teacher_weight": 0.7,
               "label_weight": 0.4}, "cwtm": {}, "dkpp": {}, "ls": {"smoothing": 0.2}}


def batch(seed, n=N, c=C, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (scale * torch.randn(n, c, generator=g, dtype=torch.float64)).requires_grad_()
    t = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    y = torch.randint(0, c, (n,), generator=g)
    return s, t, y


def options(name, seed=0):
    opts = dict(ALL_OPTIONS[name])
    if name == "dkpp":
        opts["generator"] = torch.Generator().manual_seed(seed)
    return opts


def grad_of(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def softmax(x):  # by hand, float64
    e = torch.exp(x - x.max(dim=1, keepdim=True).values)
    return e / e.sum(dim=1, keepdim=True)


def onehot(y, c=C):
    return torch.eye(c, dtype=torch.float64)[y]


def test_names_agree_with_catalog():
    assert tuple(OBJECTIVES) == catalog.OBJECTIVES


def test_ban_gradient_is_q_minus_p_eq5():
    s, t, y = batch(0)
    g = grad_of(OBJECTIVES["ban"](s, t, y), s)
    assert torch.allclose(g, (softmax(s.detach()) - softmax(t)) / N, atol=1e-12)


def test_ce_gradient_is_q_minus_y_eq6():
    s, _, y = batch(1)
    g = grad_of(OBJECTIVES["ce"](s, None, y), s)
    assert torch.allclose(g, (softmax(s.detach()) - onehot(y)) / N, atol=1e-12)


def test_ban_with_one_hot_teacher_equals_ce():
    s, _, y = batch(2)
    peaked = 1e4 * onehot(y)  # softmax is exactly one-hot in float64
    assert torch.equal(softmax(peaked), onehot(y))
    ban, ce = OBJECTIVES["ban"](s, peaked, y), OBJECTIVES["ce"](s, None, y)
    assert torch.allclose(ban, ce, atol=1e-12)
    assert torch.allclose(grad_of(ban, s), (softmax(s.detach()) - onehot(y)) / N, atol=1e-12)


def test_ban_differs_from_ce_with_a_soft_teacher():
    s, t, y = batch(3)
    assert not torch.allclose(OBJECTIVES["ban"](s, t, y), OBJECTIVES["ce"](s, None, y))


def test_temperature_scales_by_t_squared():
    s, t, y = batch(4)
    T = 2.5
    loss = OBJECTIVES["ban"](s, t, y, temperature=T)
    p, z = softmax(t / T), s.detach() / T
    log_q = z - torch.logsumexp(z, dim=1, keepdim=True)
    assert torch.allclose(loss, T * T * -(p * log_q).sum(1).mean(), atol=1e-12)
    # d/ds of T^2 CE(softmax(t/T), softmax(s/T)) = T^2 * (1/T) (q_T - p_T) / N
    assert torch.allclose(grad_of(loss, s), T * (softmax(z) - p) / N, atol=1e-12)


def test_ban_plus_labels_is_weighted_sum():
    s, t, y = batch(5)
    opts = ALL_OPTIONS["ban+l"]
    loss = OBJECTIVES["ban+l"](s, t, y, **opts)
    want = (opts["teacher_weight"] * OBJECTIVES["ban"](s, t, y, temperature=opts["temperature"])
            + opts["label_weight"] * OBJECTIVES["ce"](s, None, y))
    assert torch.allclose(loss, want, atol=1e-12)
    default = OBJECTIVES["ban+l"](s, t, y)
    assert torch.allclose(default, OBJECTIVES["ban"](s, t, y) + OBJECTIVES["ce"](s, None, y), atol=1e-12)


def test_cwtm_is_label_gradient_weighted_by_teacher_max_eq9_10():
    s, t, y = batch(6)
    p_max = softmax(t).max(dim=1).values
    w = N * p_max / p_max.sum()
    assert torch.allclose(teacher_confidence_weights(t), w, atol=1e-12)
    assert math.isclose(w.mean().item(), 1.0, rel_tol=1e-12)
    assert w.std() > 0.05  # the test batch really has unequal weights
    g = grad_of(OBJECTIVES["cwtm"](s, t, y), s)
    assert torch.allclose(g, w[:, None] * (softmax(s.detach()) - onehot(y)) / N, atol=1e-12)


def identical_rows(n=64, c=10):
    row = torch.linspace(1, 2, c, dtype=torch.float64).roll(3)  # distinct values, argmax at index 2
    return (row / row.sum()).repeat(n, 1)


def test_dkpp_permute_keeps_argmax_and_row_values():
    probs = softmax(batch(7, n=64, c=10)[1])
    before = probs.clone()
    out = dkpp_permute(probs, torch.Generator().manual_seed(0))
    assert torch.equal(probs, before)  # input untouched
    assert out.shape == probs.shape and out.dtype == probs.dtype
    rows = torch.arange(64)
    top = probs.argmax(dim=1)
    assert torch.equal(out[rows, top], probs[rows, top])
    assert torch.equal(out.sort(dim=1).values, probs.sort(dim=1).values)  # same multiset per row
    assert not torch.equal(out, probs)


def test_dkpp_rows_permuted_independently():
    probs = identical_rows()
    out = dkpp_permute(probs, torch.Generator().manual_seed(1))
    assert (out[:, 2] == probs[0, 2]).all()
    distinct = {tuple(r.tolist()) for r in out}
    assert len(distinct) > 32  # 9! orders: 64 rows all alike would mean one shared permutation


def test_dkpp_seeding():
    probs = identical_rows()
    a = dkpp_permute(probs, torch.Generator().manual_seed(5))
    b = dkpp_permute(probs, torch.Generator().manual_seed(5))
    c = dkpp_permute(probs, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    gen = torch.Generator().manual_seed(5)
    first, second = dkpp_permute(probs, gen), dkpp_permute(probs, gen)
    assert torch.equal(first, a) and not torch.equal(first, second)  # re-drawn every step


def test_dkpp_loss_is_ce_to_permuted_teacher():
    s, t, y = batch(8, n=32, c=10)
    loss = OBJECTIVES["dkpp"](s, t, y, generator=torch.Generator().manual_seed(9))
    target = dkpp_permute(softmax(t), torch.Generator().manual_seed(9))
    z = s.detach()
    log_q = z - torch.logsumexp(z, dim=1, keepdim=True)
    assert torch.allclose(loss, -(target * log_q).sum(1).mean(), atol=1e-12)
    assert torch.allclose(grad_of(loss, s), (softmax(z) - target) / 32, atol=1e-12)
    assert not torch.allclose(loss, OBJECTIVES["ban"](s, t, y))


def test_dkpp_needs_a_generator():
    s, t, y = batch(9)
    with pytest.raises(ValueError, match="dkpp.*generator"):
        OBJECTIVES["dkpp"](s, t, y)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_unknown_option_is_a_type_error(name):
    s, t, y = batch(10)
    with pytest.raises(TypeError, match=f"{re.escape(name)}.*'tempreature'"):
        OBJECTIVES[name](s, None if name == "ce" else t, y, tempreature=2.0, **options(name))


@pytest.mark.parametrize("name", [n for n in OBJECTIVES if n not in catalog.TEACHERLESS])
def test_missing_teacher_or_bad_shapes_are_value_errors(name):
    s, t, y = batch(11)
    with pytest.raises(ValueError, match=f"{re.escape(name)}.*teacher"):
        OBJECTIVES[name](s, None, y, **options(name))
    with pytest.raises(ValueError, match=r"B\*T"):
        OBJECTIVES[name](s.detach()[None], t[None], y[None], **options(name))


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_teacher_never_receives_gradient(name):
    s, t, y = batch(12)
    t.requires_grad_()
    OBJECTIVES[name](s, t, y, **options(name)).backward()
    assert t.grad is None
    assert s.grad is not None and s.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_student_trains_on_inference_mode_teacher(name):
    # real modules: the teacher runs as a caller would, in eval mode under inference_mode
    torch.manual_seed(0)
    x = torch.randn(64, 5)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # 3 classes
    teacher, student = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    teacher_opt = torch.optim.SGD(teacher.parameters(), lr=0.5)
    for _ in range(50):
        teacher_opt.zero_grad()
        OBJECTIVES["ce"](teacher(x), None, y).backward()
        teacher_opt.step()
    teacher.eval()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.inference_mode():
        t = teacher(x)
    assert t.is_inference()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    gen_opts = options(name)
    first = None
    for _ in range(30):
        opt.zero_grad()
        loss = OBJECTIVES[name](student(x), t, y, **gen_opts)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert math.isfinite(loss.item()) and loss.item() < first
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())


def per_sample_grad(name, s, t, y, **opts):
    """Autograd gradient of loss * N w.r.t. the logits: row s is sample s's gradient."""
    return grad_of(OBJECTIVES[name](s, t, y, **opts) * len(y), s)


def expected_sums(g, y):
    rows = torch.arange(len(y))
    g_y = g[rows, y]
    dark = (g.pow(2).sum(1) - g_y.pow(2)).clamp(min=0).sqrt()
    return g_y.abs().sum().item(), dark.sum().item()


@pytest.mark.parametrize("name", ["ce", "ban", "ban+l", "cwtm"])
def test_diagnostics_match_autograd(name):
    s, t, y = batch(13)
    opts = options(name)
    d = diagnostics(s, None if name == "ce" else t, y, name, **opts)
    correct, dark = expected_sums(per_sample_grad(name, s, t, y, **opts), y)
    assert d["n"] == N
    assert math.isclose(d["grad_correct"], correct, rel_tol=1e-9)
    assert math.isclose(d["grad_dark"], dark, rel_tol=1e-9)
    if name == "ce":
        assert set(d) == {"n", "grad_correct", "grad_dark"}
        return
    w = softmax(t).max(dim=1).values
    w = N * w / w.sum()
    assert math.isclose(d["conf_w"], N, rel_tol=1e-9)
    assert math.isclose(d["conf_w_sq"], (w * w).sum().item(), rel_tol=1e-9)
    agree = sum(int(t[i].argmax()) == int(y[i]) for i in range(N))
    assert d["teacher_agree"] == agree


def test_ban_gradient_parts_cancel_eq7():
    # sum_i (q_i - p_i) = 0: the correct-class part is minus the sum of the dark-knowledge parts
    s, t, y = batch(14)
    g = per_sample_grad("ban", s, t, y)
    rows = torch.arange(N)
    assert torch.allclose(g[rows, y], -(g.sum(1) - g[rows, y]), atol=1e-12)


def test_dkpp_diagnostics_are_autograds_gradient_on_the_permuted_target():
    # the training order: the loss draws a permutation and backpropagates; the step's
    # diagnostics then describe that very target, and draw nothing from the generator
    s, t, y = batch(15)
    gen = torch.Generator().manual_seed(0)
    g = per_sample_grad("dkpp", s, t, y, generator=gen)
    after_loss = gen.get_state()
    d = diagnostics(s, t, y, "dkpp", generator=gen)
    assert torch.equal(gen.get_state(), after_loss)
    correct, dark = expected_sums(g, y)
    assert math.isclose(d["grad_correct"], correct, rel_tol=1e-9)
    assert math.isclose(d["grad_dark"], dark, rel_tol=1e-9)
    # ... and the permuted target is not the teacher: the un-permuted gradient differs
    _, unpermuted_dark = expected_sums(per_sample_grad("ban", s, t, y), y)
    assert not math.isclose(d["grad_dark"], unpermuted_dark, rel_tol=1e-3)
    # the analytic gradient row by row equals autograd's (q - permuted p)
    from engine.objectives import logit_grad
    assert torch.allclose(logit_grad(s, t, y, "dkpp", generator=gen), g, atol=1e-12)


def test_dkpp_diagnostics_before_any_loss_describe_the_next_draw_and_draw_nothing():
    s, t, y = batch(16)
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    d = diagnostics(s, t, y, "dkpp", generator=gen)
    assert torch.equal(gen.get_state(), state)
    correct, dark = expected_sums(per_sample_grad("dkpp", s, t, y, generator=gen), y)
    assert math.isclose(d["grad_correct"], correct, rel_tol=1e-9)
    assert math.isclose(d["grad_dark"], dark, rel_tol=1e-9)


def test_diagnostics_reject_unknown_options():
    s, t, y = batch(16)
    with pytest.raises(TypeError, match="ban.*'T'"):
        diagnostics(s, t, y, "ban", T=2.0)


def test_summarize_diagnostics_over_batches():
    sums = {}
    weights, agree = [], 0
    for seed in (17, 18):
        s, t, y = batch(seed, scale=3.0)
        for k, v in diagnostics(s, t, y, "cwtm").items():
            sums[k] = sums.get(k, 0) + v
        w = softmax(t).max(dim=1).values
        weights.append(N * w / w.sum())
        agree += int((t.argmax(1) == y).sum())
    w = torch.cat(weights)
    out = summarize_diagnostics(sums)
    assert math.isclose(out["conf_w_mean"], w.mean().item(), rel_tol=1e-9)
    assert math.isclose(out["conf_w_std"], w.std(unbiased=False).item(), rel_tol=1e-6)
    assert math.isclose(out["teacher_acc"], agree / (2 * N), rel_tol=1e-12)
    assert math.isclose(out["grad_correct"], sums["grad_correct"] / (2 * N), rel_tol=1e-12)
    s, _, y = batch(19)
    assert set(summarize_diagnostics(diagnostics(s, None, y, "ce"))) == {"grad_correct", "grad_dark"}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_low_precision_student_is_computed_in_float32(name):
    # bf16 logits are upcast (as autocast does), not the teacher's probabilities rounded to bf16
    s, t, y = batch(20)
    s16, t32 = s.detach().bfloat16(), t.float()
    low = OBJECTIVES[name](s16, t32, y, **options(name))
    full = OBJECTIVES[name](s16.float(), t32, y, **options(name))
    assert low.dtype == torch.float32 and torch.equal(low, full)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
def test_label_smoothing_against_an_independent_formula(eps):
    # by hand, float64: (1 - e) * (-log q_y) + e * mean_c(-log q_c), averaged over the batch
    s, t, y = batch(21)
    log_q = torch.log(softmax(s.detach()))
    by_hand = ((1 - eps) * -log_q[torch.arange(N), y] - eps * log_q.mean(dim=1)).mean()
    loss = OBJECTIVES["ls"](s, None, y, smoothing=eps)
    assert math.isclose(loss.item(), by_hand.item(), rel_tol=1e-12)
    assert math.isclose(OBJECTIVES["ls"](s, t, y, smoothing=eps).item(), by_hand.item(), rel_tol=1e-12)  # no teacher term
    target = (1 - eps) * onehot(y) + eps / C
    assert torch.allclose(grad_of(loss, s), (softmax(s.detach()) - target) / N, atol=1e-12)
    d = diagnostics(s, None, y, "ls", smoothing=eps)
    correct, dark = expected_sums(per_sample_grad("ls", s, None, y, smoothing=eps), y)
    assert set(d) == {"n", "grad_correct", "grad_dark"}
    assert math.isclose(d["grad_correct"], correct, rel_tol=1e-9) and math.isclose(d["grad_dark"], dark, rel_tol=1e-9)
    if eps == 0.0:
        assert loss.item() == pytest.approx(OBJECTIVES["ce"](s, None, y).item(), rel=1e-12)


def test_label_smoothing_default_and_bad_values():
    s, _, y = batch(22)
    assert OBJECTIVES["ls"](s, None, y).item() == pytest.approx(OBJECTIVES["ls"](s, None, y, smoothing=0.1).item())
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="'ls': expected smoothing in \\[0, 1\\)"):
            OBJECTIVES["ls"](s, None, y, smoothing=bad)
