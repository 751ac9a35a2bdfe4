"""Model surgery on any ``nn.Module``: swap, remove or fold its normalization layers.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations on the same network and deploy the
standardization-loss model with no normalization cost at inference; batch normalization
reaches the same inference cost by folding (Ioffe & Szegedy 2015, arXiv:1502.03167, section
3.1; Jacob et al. 2018, arXiv:1712.05877, section 3.2).

- :func:`is_norm_layer` — torch's BN/SyncBN/IN/GN/LN/RMSNorm and every normlab ``NormLayer``.
- :func:`replace_norm` — every norm layer becomes a registered method's ``norm()`` (followed
  by the nonlinearity the old layer carried, if any: ``NormLayer.without_norm()``).
- :func:`remove_norm` — every norm layer becomes ``nn.Identity``, or the nonlinearity it
  carried (FRN+TLU -> ReLU, Proxy Norm -> its activation).
- :func:`fold_batch_norm` — eval-affine norms folded into the preceding Conv/Linear.
- :func:`fold_weights` — the folding math, a pure function.
- :func:`deploy_model` — a trained model's deployment form: the method's ``for_inference``,
  then :func:`fold_batch_norm` for a method that declares ``folds``.

All converters deep-copy the model unless ``inplace=True``.

Example:
    >>> model = build_model("cnn", create_method("batch_norm"), (1, 28, 28), 10)
    >>> bare = remove_norm(model)
    >>> affine = replace_norm(model, "batch_norm_affine")
    >>> deployed = fold_batch_norm(model).model
    >>> same = deploy_model(model, create_method("batch_norm"))
"""

from ..nn_types import WEIGHT_LAYERS
from .detect import NORM_TYPES, is_norm_layer, norm_features, norm_spatial_dims
from .deploy import deploy_model
from .fold import FoldResult, eval_affine, fold_batch_norm, fold_weights
from .pairs import Pair, find_pairs
from .replace import Replaced, convert_norm_layers, remove_norm, replace_norm

__all__ = [
    "NORM_TYPES", "WEIGHT_LAYERS", "is_norm_layer", "norm_features", "norm_spatial_dims",
    "FoldResult", "eval_affine", "fold_batch_norm", "fold_weights", "deploy_model",
    "Pair", "find_pairs",
    "Replaced", "convert_norm_layers", "remove_norm", "replace_norm",
]
