"""The building blocks of generated models, as plain PyTorch modules.

Each file is ordinary, importable Python (tested directly in tests/test_modules.py). The part
below its ``EMITTED`` line is what :mod:`specc.emit` copies into a generated ``model.py``; the
imports above that line are the ones the generated file's header provides.

A block kind (:mod:`specc.plan`) names its own module in ``Block.code``; the layers several kinds
share are listed here, in the order they are written, ahead of the kinds' own modules.
"""

#: Layers shared by several kinds, written first (a kind's own module may use them).
SHARED = ("conv_bn_act", "separable_conv", "conv_norm_act")
