"""Batch-independent normalization layers and the activation-aware blocks.

- ``group_norm``: Wu & He, "Group Normalization", 2018, arXiv:1803.08494.
- ``layer_norm``: Ba, Kiros & Hinton, "Layer Normalization", 2016, arXiv:1607.06450.
- ``instance_norm``: Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing
  Ingredient for Fast Stylization", 2016, arXiv:1607.08022.
- ``frn``: Singh & Krishnan, "Filter Response Normalization Layer: Eliminating Batch
  Dependence in the Training of Deep Neural Networks", 2020, arXiv:1911.09737.
- ``proxy_norm``: Labatie, Masters, Eaton-Rosen & Luschi, "Proxy-Normalizing Activations to
  Match Batch Normalization while Removing Batch Dependence", 2021, arXiv:2106.03743.
- ``ic_layer``: Chen, Chen, Zhang, Wang, Zhang & Zhou, "Rethinking the Usage of Batch
  Normalization and Dropout in the Training of Deep Neural Networks", 2019, arXiv:1905.05928.

The first three are plain ``norm -> activation`` blocks. The last three change the block:

- ``frn``: ``FRN+TLU`` *replaces* the model's activation (ReLU, or sigmoid in
  ``mlp_sigmoid``): the TLU ``max(y, tau)`` is the nonlinearity, as in the paper.
- ``proxy_norm``: ``GN (or LN), no affine -> gamma, beta -> activation -> proxy-normalize ->
  gamma', beta'``; the model's activation is used, inside the block.
- ``ic_layer``: ``activation -> BN -> Dropout(p)``, so the IC layer sits right before the
  next weight layer.
"""

from __future__ import annotations

from torch import nn

from ..functional.proxy_norm import DEFAULT_NUM_NODES
from ..layers.base import with_spatial_dims
from ..layers.frn import FilterResponseNorm
from ..layers.group_norms import GroupNorm, GroupNorm1, InstanceNorm, default_num_groups
from ..layers.ic_layer import ICLayer
from ..layers.proxy_norm import ProxyNormActivation
from . import METHODS
from .base import Method

__all__ = ["GroupNormMethod", "LayerNormMethod", "InstanceNormMethod", "FRNMethod",
           "ProxyNormMethod", "ICLayerMethod"]

PER_SAMPLE = "layer (per-sample statistics, same as training)"


@METHODS.register("group_norm")
class GroupNormMethod(Method):
    """Group Normalization before each nonlinearity.

    Args:
        num_groups: groups per layer (must divide every width); ``None`` picks
            :func:`~normlab.layers.group_norms.default_num_groups` per layer: G = 32 lowered
            to keep >= 4 channels per group (>= 16 for ``(N, C)`` features).
        eps: added to the variance.
    """

    kind = "layer"
    paper = "Wu & He 2018, arXiv:1803.08494"
    batch_dependent = False
    inference = PER_SAMPLE
    conv_bias = False  # as in GN ResNets; GN absorbs only a bias shared within each group

    def __init__(self, num_groups: int | None = None, eps: float = 1e-5) -> None:
        self.num_groups = num_groups
        self.eps = eps

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        groups = self.num_groups or default_num_groups(num_features, spatial_dims)
        return with_spatial_dims(GroupNorm(num_features, groups, eps=self.eps), spatial_dims)


class _EpsOnlyNormMethod(Method):
    """A per-sample ``norm -> activation`` method whose one option is ``eps``."""

    kind = "layer"
    batch_dependent = False
    inference = PER_SAMPLE
    conv_bias = False

    def __init__(self, eps: float = 1e-5) -> None:
        self.eps = eps


@METHODS.register("layer_norm")
class LayerNormMethod(_EpsOnlyNormMethod):
    """Layer Normalization (over channels and positions, per sample) before each nonlinearity.

    Args:
        eps: added to the variance.
    """

    paper = "Ba, Kiros & Hinton 2016, arXiv:1607.06450"

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        return with_spatial_dims(GroupNorm1(num_features, eps=self.eps), spatial_dims)


@METHODS.register("instance_norm")
class InstanceNormMethod(_EpsOnlyNormMethod):
    """Instance Normalization before each nonlinearity.

    On ``(N, C)`` features (``spatial_dims == 0``) each channel has a single element, whose
    instance-normalized value is always 0; there this method uses layer norm instead (the
    sample's one "instance" is then the whole feature vector), so ``mlp`` with
    ``instance_norm`` equals ``mlp`` with ``layer_norm``.

    Args:
        eps: added to the variance.
    """

    paper = "Ulyanov, Vedaldi & Lempitsky 2016, arXiv:1607.08022"

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        layer = GroupNorm1 if spatial_dims == 0 else InstanceNorm
        return with_spatial_dims(layer(num_features, eps=self.eps), spatial_dims)


@METHODS.register("frn")
class FRNMethod(Method):
    """Filter Response Normalization with its TLU, replacing norm *and* activation.

    The model's activation is dropped: the block is ``FRN -> TLU`` alone. Weight layers keep
    their bias (FRN does not subtract a mean, so the bias is not redundant).

    Args:
        eps: the fixed epsilon (paper: 1e-6).
        learnable_eps: add a learned per-channel ``|eps_l|``; ``None`` (default) turns it on
            only for ``(N, C)`` features, as the paper advises for 1x1 activation maps.
    """

    kind = "layer"
    paper = "Singh & Krishnan 2020, arXiv:1911.09737"
    batch_dependent = False
    inference = PER_SAMPLE
    conv_bias = True

    def __init__(self, eps: float = 1e-6, learnable_eps: bool | None = None) -> None:
        self.eps = eps
        self.learnable_eps = learnable_eps

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        learn = spatial_dims == 0 if self.learnable_eps is None else self.learnable_eps
        return with_spatial_dims(
            FilterResponseNorm(num_features, eps=self.eps, learnable_eps=learn), spatial_dims)

    def block(self, num_features: int, spatial_dims: int, activation: nn.Module) -> nn.Module:
        # TLU is FRN's nonlinearity: the model's activation is replaced, not appended.
        return self.norm(num_features, spatial_dims)


@METHODS.register("proxy_norm")
class ProxyNormMethod(Method):
    """GN (or LN) + Proxy Norm: ``norm -> affine -> activation -> proxy-normalize -> affine``.

    Args:
        base_norm: ``"group"`` (default; the paper's GN+PN) or ``"layer"`` (LN+PN); used
            without its own affine map, which Proxy Norm's ``(gamma, beta)`` replaces.
        num_groups: for ``base_norm="group"``; ``None`` as in ``group_norm``.
        eps: added to the base norm's variance and to the proxy variance.
        num_nodes: quadrature nodes for the proxy moments.
    """

    kind = "layer"
    paper = "Labatie, Masters, Eaton-Rosen & Luschi 2021, arXiv:2106.03743"
    batch_dependent = False
    inference = PER_SAMPLE
    conv_bias = False

    def __init__(self, base_norm: str = "group", num_groups: int | None = None,
                 eps: float = 1e-5, num_nodes: int = DEFAULT_NUM_NODES) -> None:
        if base_norm not in ("group", "layer"):
            raise ValueError(f"base_norm must be 'group' or 'layer', got {base_norm!r}")
        self.base_norm = base_norm
        self.num_groups = num_groups
        self.eps = eps
        self.num_nodes = num_nodes

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        """The batch-independent normalization in front of the proxy-normalized activation."""
        if self.base_norm == "layer":
            layer = GroupNorm1(num_features, eps=self.eps, affine=False)
        else:
            groups = self.num_groups or default_num_groups(num_features, spatial_dims)
            layer = GroupNorm(num_features, groups, eps=self.eps, affine=False)
        return with_spatial_dims(layer, spatial_dims)

    def block(self, num_features: int, spatial_dims: int, activation: nn.Module) -> nn.Module:
        return nn.Sequential(
            self.norm(num_features, spatial_dims),
            with_spatial_dims(ProxyNormActivation(num_features, activation, eps=self.eps,
                                                  num_nodes=self.num_nodes), spatial_dims),
        )


@METHODS.register("ic_layer")
class ICLayerMethod(Method):
    """IC layer (BN then Dropout) after each activation, i.e. before the next weight layer.

    Args:
        p: dropout probability (default 0.05: the paper recommends small rates).
        eps, momentum: of the BatchNorm.
    """

    kind = "layer"
    paper = "Chen et al. 2019, arXiv:1905.05928"
    batch_dependent = True
    inference = "per-channel affine (BN running stats; dropout off)"
    conv_bias = True  # BN follows the activation, so the weight layer's bias still matters

    def __init__(self, p: float = 0.05, eps: float = 1e-5, momentum: float = 0.1) -> None:
        self.p = p
        self.eps = eps
        self.momentum = momentum

    def norm(self, num_features: int, spatial_dims: int) -> nn.Module:
        """The IC layer itself; :meth:`block` places it after the activation."""
        layer = ICLayer(num_features, p=self.p, eps=self.eps, momentum=self.momentum)
        return with_spatial_dims(layer, spatial_dims)

    def block(self, num_features: int, spatial_dims: int, activation: nn.Module) -> nn.Module:
        return nn.Sequential(activation, self.norm(num_features, spatial_dims))
