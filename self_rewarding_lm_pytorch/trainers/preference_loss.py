"""`PreferenceLoss`: the settings of a pair loss, held in one place by DPO, SPIN and every DPO stage.

    PreferenceLoss(beta=0.1, loss_type="sigmoid", sft_weight=1.0)

`loss_type` is any of `losses.dpo_loss`'s; the parameters of the other types are ignored, so one
config can sweep `loss_type`. `sft_weight` adds RPO's per-token NLL on the chosen response (see
`PairTask`). Bad settings raise here, at construction, as the first step would have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from self_rewarding_lm_pytorch.core.field_types import check_field_types
from self_rewarding_lm_pytorch.core.losses import REFERENCE_FREE_LOSS_TYPES, check_dpo_loss_args, dpo_loss

__all__ = ["PreferenceLoss"]


@dataclass(frozen=True)
class PreferenceLoss:
    """The loss of a preference pair: its type, beta, and the parameters of each variant."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    label_smoothing: float = 0.0
    sft_weight: float = 0.0
    dpop_lambda: float = 50.0
    simpo_gamma: float = 0.5
    orpo_lambda: float = 0.1

    def __post_init__(self):
        check_field_types(self)
        if not self.sft_weight >= 0:  # NaN fails too
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        check_dpo_loss_args(**self._loss_kwargs())

    @property
    def reference_free(self) -> bool:
        """True for losses that never look at a reference model (SimPO, ORPO): none is built or run."""
        return self.loss_type in REFERENCE_FREE_LOSS_TYPES

    def pair_loss(self) -> Callable:
        """`dpo_loss` with these settings: (policy_a, policy_b, ref_a, ref_b, *, token counts) -> losses, rewards."""
        return partial(dpo_loss, **self._loss_kwargs())

    def to_dict(self) -> dict[str, Any]:
        """The settings by name, as saved beside every checkpoint."""
        return dataclasses.asdict(self)

    def _loss_kwargs(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k != "sft_weight"}
