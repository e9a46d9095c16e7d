"""specc: a declarative model-spec compiler for atrous segmentation networks (DeepLabv3/v3+).

The pipeline, one module per stage: :mod:`specc.load` → :mod:`specc.validate` →
:mod:`specc.derive` → :mod:`specc.graph` → :mod:`specc.emit` → :mod:`specc.compile`.
:mod:`specc.api` strings them together.
"""

__version__ = "0.1.0"
