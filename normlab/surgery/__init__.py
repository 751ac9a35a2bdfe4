"""Model surgery on any ``nn.Module``: swap, remove, insert or fold its normalization layers.

Collins, Ballé & Shlens, "Accelerating Training of Deep Neural Networks with a Standardization
Loss", 2019, arXiv:1903.00925, compare normalizations on the same network and deploy the
standardization-loss model with no normalization cost at inference; batch normalization
reaches the same inference cost by folding (Ioffe & Szegedy 2015, arXiv:1502.03167, section
3.1; Jacob et al. 2018, arXiv:1712.05877, section 3.2).

- :func:`is_norm_layer` — torch's BN/SyncBN/IN/GN/LN/RMSNorm, FrozenBatchNorm2d and every
  normlab ``NormLayer``.
- :func:`replace_norm` — every norm layer becomes a registered method's ``norm()`` (its
  ``block()`` with the activation after the norm, for FRN / Proxy Norm / IC layer).
- :func:`remove_norm` — every norm layer becomes ``nn.Identity``, or the nonlinearity it
  carried (FRN+TLU -> ReLU, Proxy Norm -> its activation).
- :func:`insert_norm` — a norm-free model gets a method's norm after every weight layer but
  the logit layer (one forward of an example input tells which and where the channels are).
- :func:`fold_batch_norm` — eval-affine norms folded into the preceding Conv/ConvTranspose/
  Linear (eval-mode models only, as ``torch.nn.utils.fusion.fuse_conv_bn_eval``).
- :func:`fold_weights` — the folding math, a pure function.
- :func:`deploy_model` — a trained model's deployment form: the method's ``for_inference``,
  then :func:`fold_batch_norm` for a method that declares ``folds``.

Every function returns the model and deep-copies it first unless ``inplace=True``. What was
done is an opt-in: pass ``report=[]`` and one :class:`SurgeryRecord` per changed or skipped
layer is appended.

Example:
    >>> model = build_model("cnn", create_method("batch_norm"), (1, 28, 28), 10)
    >>> bare = remove_norm(model)
    >>> gn = replace_norm(model, "group_norm", num_groups=4)
    >>> report = []
    >>> deployed = fold_batch_norm(model.eval(), report=report)
    >>> normed = insert_norm(bare, "layer_norm", torch.randn(2, 1, 28, 28))
"""

from ..nn_types import WEIGHT_LAYERS
from .channels import ChannelsLast
from .deploy import deploy_model
from .detect import NORM_TYPES, channels_last, is_norm_layer, norm_features, norm_spatial_dims
from .fold import eval_affine, fold_batch_norm, fold_weights
from .follow import ACTIVATIONS, find_activations
from .insert import insert_norm
from .pairs import FOLD_LAYERS, Pair, find_pairs
from .records import SurgeryRecord
from .replace import convert_norm_layers, remove_norm, replace_norm

__all__ = [
    "NORM_TYPES", "WEIGHT_LAYERS", "FOLD_LAYERS", "ACTIVATIONS", "is_norm_layer",
    "norm_features", "norm_spatial_dims", "channels_last", "ChannelsLast",
    "eval_affine", "fold_batch_norm", "fold_weights", "deploy_model",
    "Pair", "find_pairs", "find_activations", "SurgeryRecord",
    "convert_norm_layers", "remove_norm", "replace_norm", "insert_norm",
]
