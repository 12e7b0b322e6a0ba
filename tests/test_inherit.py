"""Inheriting a teacher's stem and head (paper Tables 3-5): copies by value, frozen parts stay
bit-for-bit through SGD with weight decay, and shapes that do not fit are refused clearly."""
import pytest
import torch
import torch.nn.functional as F

from engine import models as M
from engine import param_counts
from engine.models.inherit import inherit



TEACHER = "densenet-bc-16-8"   # a small DenseNet-BC: stem 16 channels, head 32 -> 10
STUDENTS = {"ban-wrn-1-1": {"teacher": TEACHER}, "ban-preresnet-2-1": {"teacher": TEACHER},
            "densenet-bc-16-8-depth2": {}}


def pair(student_name):
    torch.manual_seed(0)
    teacher = M.build(TEACHER, 10)
    torch.manual_seed(1)
    student = M.build(student_name, 10, **STUDENTS[student_name])
    return student, teacher


def part_state(model, part):
    return {k: v.clone() for k, v in getattr(model, part).state_dict().items()}


def equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("student_name", list(STUDENTS))
def test_inherited_parts_equal_the_teachers_and_are_copies(student_name):
    student, teacher = pair(student_name)
    assert not equal(part_state(student, "stem"), part_state(teacher, "stem"))
    inherit(student, teacher, ["stem", "head"], [])
    for part in ("stem", "head"):
        assert equal(part_state(student, part), part_state(teacher, part))
    with torch.no_grad():   # by value: changing the teacher leaves the student alone
        teacher.stem.weight.add_(1.0)
    assert not torch.equal(student.stem.weight, teacher.stem.weight)


def sgd_steps(model, steps=5):
    """What the training loop does: SGD (momentum, weight decay) over the parameters that
    require grad, on a few batches."""
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          nesterov=True, weight_decay=5e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(4, 3, 16, 16, generator=gen), torch.randint(0, 10, (4,), generator=gen)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("frozen", [True, False])
@pytest.mark.parametrize("student_name", ["ban-wrn-1-1", "densenet-bc-16-8-depth2"])
def test_frozen_parts_stay_bit_for_bit_through_sgd(student_name, frozen):
    student, teacher = pair(student_name)
    inherit(student, teacher, ["stem", "head"], ["stem", "head"] if frozen else [])
    before = {part: part_state(teacher, part) for part in ("stem", "head")}
    body = [p.detach().clone() for n, p in student.named_parameters() if n.startswith("blocks.")]
    sgd_steps(student)
    for part in ("stem", "head"):
        assert equal(part_state(student, part), before[part]) == frozen, part
        assert all(p.requires_grad != frozen for p in getattr(student, part).parameters())
    after = [p for n, p in student.named_parameters() if n.startswith("blocks.")]
    assert all(not torch.equal(a, b) for a, b in zip(body, after))


def test_freezing_only_the_stem_trains_the_head():
    student, teacher = pair("ban-wrn-1-1")
    inherit(student, teacher, ["stem", "head"], ["stem"])
    sgd_steps(student)
    assert torch.equal(student.stem.weight, teacher.stem.weight)
    assert not torch.equal(student.head.weight, teacher.head.weight)


def test_mismatched_stem_names_both_models_the_layer_and_both_shapes():
    teacher, student = M.build("wrn-16-2", 10), M.build("densenet-bc-16-12", 10)
    with pytest.raises(ValueError) as err:
        inherit(student, teacher, ["stem"], [])
    msg = str(err.value)
    for piece in ("'wrn-16-2'", "'densenet-bc-16-12'", "stem.weight", "[16, 3, 3, 3]", "[24, 3, 3, 3]"):
        assert piece in msg, (piece, msg)


def test_mismatched_head_names_the_layer_and_both_shapes():
    with torch.device("meta"):
        teacher, student = M.build("densenet-bc-90-60", 100), M.build("ban-wrn-1-1", 10)
    with pytest.raises(ValueError, match=r"head\.weight has shape \[100, 1500\] in the teacher and shape \[10, 1500\]"):
        inherit(student, teacher, ["stem", "head"], [])


def test_unknown_or_unshared_parts_are_refused():
    student, teacher = pair("ban-wrn-1-1")
    with pytest.raises(ValueError, match="expected parts among stem, head, found 'body'"):
        inherit(student, teacher, ["body"], [])
    with pytest.raises(ValueError, match="expected frozen parts to be inherited too, found 'head'"):
        inherit(student, teacher, ["stem"], ["head"])


@pytest.mark.parametrize("name", [n for n in param_counts.PAPER_PARAMS if n.startswith(("densenet-bc-90-60-", "ban-"))])
def test_every_paper_student_takes_densenet_90_60s_stem_and_head(name):
    with torch.device("meta"):   # shapes only: no memory, no time
        teacher, student = M.build("densenet-bc-90-60", 100), M.build(name, 100)
        inherit(student, teacher, ["stem", "head"], ["stem", "head"])
    assert not any(p.requires_grad for p in list(student.stem.parameters()) + list(student.head.parameters()))
