"""The one activation registry; modules register their classes on import."""

from __future__ import annotations

from torch import nn

from tmafbench.registry import Registry

#: name -> Activation class; `num_features` is supplied by the model, never by the user.
ACTIVATIONS: Registry[nn.Module] = Registry("activation", reserved=("num_features",))
