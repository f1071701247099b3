"""The three registries: the one place each kind of name (from a study file or the command line)
becomes an object, through its `create`.

They are declared here, apart from the packages that fill them, so that `tmafbench activations`,
`tasks` and `models` can list names and parameters (`Registry.catalog`, read from the source)
without importing the packages, and with them torch.
"""

from __future__ import annotations

from tmafbench.registry import Registry

#: name -> Activation class; `num_features` is supplied by the model, never by the user.
ACTIVATIONS = Registry("activation", reserved=("num_features",), package="activations")
#: name -> Task class.
TASKS = Registry("task", package="tasks")
#: name -> model function; the activation factory and the task are supplied by the trainer.
MODELS = Registry("model", reserved=("activation", "task"), package="models")
