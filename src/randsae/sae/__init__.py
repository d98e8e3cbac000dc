"""TopK sparse autoencoders: config, model, data stream and trainer (docs/sae.md).

Public API::

    from randsae.sae import SaeConfig, TopKSAE, train_sae, train_saes, train_parts, TrainResult
"""

from randsae.sae.config import SaeConfig, SaeConfigError
from randsae.sae.data import ActivationDataError, ActivationStream, WindowedStream
from randsae.sae.model import TopKSAE
from randsae.sae.trainer import (
    CheckpointMismatchError,
    TrainPart,
    TrainResult,
    train_parts,
    train_sae,
    train_saes,
)

__all__ = [
    "ActivationDataError",
    "ActivationStream",
    "CheckpointMismatchError",
    "SaeConfig",
    "SaeConfigError",
    "TopKSAE",
    "WindowedStream",
    "TrainPart",
    "TrainResult",
    "train_parts",
    "train_sae",
    "train_saes",
]
