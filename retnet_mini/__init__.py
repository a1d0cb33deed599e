"""retnet_mini: a compact, tested RetNet (Sun et al. 2023) in PyTorch.

The math lives in :mod:`retnet_mini.retention` (pure functions), the layers in :mod:`retnet_mini.layers`,
the language model in :mod:`retnet_mini.model`.
"""
from .retention import (
    chunkwise_retention,
    decay_matrix,
    experiment_log_decay,
    paper_log_decay,
    parallel_retention,
    read_state,
    recurrent_retention,
    update_state,
)
from .model import RetNetConfig, RetNetLM, RetNetState

__version__ = "0.1.0"
