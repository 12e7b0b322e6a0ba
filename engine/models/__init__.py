"""The model registry: `build(name, num_classes, in_channels=3, **options) -> nn.Module`.

A model name (e.g. "wrn-28-10", "densenet-bc-90-60-depth2") is parsed by `engine.catalog`,
which has no torch so that configs can be checked anywhere; the catalog gives the family and the
options written in the name, and `BUILDERS[family]` makes the module. A family's builder is
called as `builder(num_classes=..., in_channels=..., **options)` for image models and
`builder(num_classes=..., **options)` for language models (num_classes = vocabulary size).
Its keyword arguments are the family's options: options from the name and from the config are
merged, and an option the builder does not take is refused naming the model and the option.

The table and `build` live in `registry.py`, the layer helpers every family uses in `common.py`
(neither imports this package). Families live in their own modules and register in the table:
`cnn.py` (cnn-small), `resnet.py` (wrn, preact-resnet, and the paper's Table 5 BAN-ResNets),
`densenet.py` (densenet-bc and the Table 4 students), `airbench.py` (the cifar10-fast preset). Language models (`lm.py`) keep their own `BUILDERS` dict, merged below.

Every image model has `.stem` (its first convolution) and `.head` (its final nn.Linear, run in
float32 by `fp32_head` whatever the precision), and ends in global average pooling, so it takes any input size (1x8x8 digits, 3x32x32 CIFAR);
`engine.models.inherit.inherit` copies those two parts from a teacher (paper Tables 3-5).
"""
from __future__ import annotations

from engine.models.common import check_dropout, check_width, fp32_head, he_init  # noqa: F401
from engine.models.registry import BUILDERS, build, count_params, names, param_count, register  # noqa: F401

# The families register themselves on import (with registry.register and the common helpers);
# the paper's parameter counts live torch-free in engine.param_counts.
from engine.models import airbench, cnn, densenet, resnet  # noqa: F401

from engine.models import lm  # (language models keep their own table of builders)

for _family, _builder in lm.BUILDERS.items():
    register(_family)(_builder)
