"""Weight initialisation of the built-in models (the ``init`` hyperparameter).

``default`` leaves every layer as PyTorch (and, for the ResNet, its Kaiming fan-out convolutions)
made it. The other schemes re-draw the weights of every linear and convolution layer from
``torch.nn.init`` and zero their biases; BatchNorm keeps its (1, 0). Kaiming uses the gain of the
model's activation where torch defines one (ReLU's for the ReLU-like ``elu``, ``gelu``, ``softplus``).
Draws come from torch's global generator, which the learner seeds before it builds a fold's model.
"""

from __future__ import annotations

from torch import nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_KAIMING_GAINS = {"relu": "relu", "leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def apply_init(net: nn.Module, scheme: str, activation: str = "relu") -> nn.Module:
    """Re-initialise ``net``'s linear and conv layers in place by ``scheme`` (one of
    :data:`hpo.params.INITS`); returns ``net``. ``default`` changes nothing."""
    if scheme == "default":
        return net
    gain = _KAIMING_GAINS.get(activation, "relu")
    for m in net.modules():
        if not isinstance(m, _LAYERS):
            continue
        w = m.weight
        if scheme == "kaiming_uniform":
            nn.init.kaiming_uniform_(w, a=0.01 if gain == "leaky_relu" else 0, nonlinearity=gain)
        elif scheme == "kaiming_normal":
            nn.init.kaiming_normal_(w, a=0.01 if gain == "leaky_relu" else 0, nonlinearity=gain)
        elif scheme == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif scheme == "orthogonal":
            nn.init.orthogonal_(w)
        else:
            raise ValueError(f"unknown init {scheme!r}; expected one of: default, kaiming_uniform, kaiming_normal, "
                             "xavier_uniform, orthogonal")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return net
