"""Model unwrapping: THE one way to reach the network inside the wrappers training puts around it."""

from __future__ import annotations

from torch import nn

__all__ = ["unwrap_model", "unwrap_network"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel (`.module`) and `torch.compile` (`._orig_mod`) wrappers.

    Its parameter names are the model's own ("net.x", never "module.net.x"), so checkpoints load anywhere.
    """
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(inner := getattr(model, "_orig_mod", None), nn.Module):
            model = inner
        else:
            return model


def unwrap_network(model: nn.Module) -> nn.Module:
    """`unwrap_model`, then the network inside an x-transformers `AutoregressiveWrapper` (`.net`)."""
    from x_transformers import AutoregressiveWrapper

    model = unwrap_model(model)
    return unwrap_model(model.net) if isinstance(model, AutoregressiveWrapper) else model
