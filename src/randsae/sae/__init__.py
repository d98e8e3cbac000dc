"""TopK sparse autoencoders: config, model, data stream and trainer (docs/sae.md).

Public API::

    from randsae.sae import SaeConfig, TopKSAE, train_sae, train_saes, TrainResult
"""

from randsae.sae.config import SaeConfig, SaeConfigError
from randsae.sae.data import ActivationDataError, ActivationStream
from randsae.sae.model import TopKSAE
from randsae.sae.trainer import CheckpointMismatchError, TrainResult, train_sae, train_saes

__all__ = [
    "ActivationDataError",
    "ActivationStream",
    "CheckpointMismatchError",
    "SaeConfig",
    "SaeConfigError",
    "TopKSAE",
    "TrainResult",
    "train_sae",
    "train_saes",
]
