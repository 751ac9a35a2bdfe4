"""normlab: the standardization loss and the normalizations it replaces.

The library (this package minus :mod:`normlab.lab`) has four parts:

- :mod:`normlab.functional` — pure tensor functions (the standardization loss, L1/L-inf/Range
  BN, FRN, proxy norm, ...);
- :mod:`normlab.losses`, :mod:`normlab.layers`, :mod:`normlab.optim` — the loss, layer and
  gradient methods as modules you attach to your own model;
- :mod:`normlab.methods` — every normalization as a registered method (``normlab list``);
- :mod:`normlab.surgery` — swap, remove or fold the normalization of any model;
- :mod:`normlab.distributed` — synchronized norms and global statistics under DDP.

The lab (:mod:`normlab.lab`: data, models, trainer, reports, CLI) builds on it, never the
other way round.

Example:
    >>> import normlab
    >>> std = normlab.StandardizationLoss(model, weight=1.0)   # hooks every conv/linear but the last
    >>> loss = F.cross_entropy(model(x), y) + std()
"""

from . import functional
from .distributed import revert_sync_norm, sync_norm
from .functional import standardization_loss
from .losses import StandardizationLoss
from .methods import METHODS, Method, create_method
from .optim import AGC, BNP
from .surgery import fold_batch_norm, insert_norm, remove_norm, replace_norm

__version__ = "0.1.0"

__all__ = [
    "functional", "standardization_loss", "StandardizationLoss",
    "METHODS", "Method", "create_method",
    "AGC", "BNP",
    "fold_batch_norm", "insert_norm", "remove_norm", "replace_norm", "sync_norm",
    "revert_sync_norm",
    "__version__",
]
