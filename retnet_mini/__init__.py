"""retnet_mini: a compact, tested RetNet (Sun et al. 2023) in PyTorch.

Layers of the package, bottom to top (imports go one way):

- :mod:`retnet_mini.decay`: every rule about gamma (schedules, gated decay, D and its rescaling);
- :mod:`retnet_mini.retention`: the math of the three forms, pure functions;
- :mod:`retnet_mini.rotation`: the theta rotation;
- :mod:`retnet_mini.layers`: multi-scale retention, the FFN, the block;
- :mod:`retnet_mini.model`: ``RetNetConfig`` and ``RetNetLM``;
- :mod:`retnet_mini.transformer`: a same-size Transformer baseline with a KV cache;
- :mod:`retnet_mini.data`, :mod:`retnet_mini.training`: tokenizer, corpus, training loop;
- :mod:`retnet_mini.tasks`: synthetic probes (associative recall, copying);
- :mod:`retnet_mini.bench`: benchmarks (`python -m retnet_mini.bench NAME`);
- :mod:`retnet_mini.costs`, :mod:`retnet_mini.widgets`, :mod:`retnet_mini.exercises`: what the book uses.

Importing the package tells glibc's malloc to keep large freed buffers for reuse, so that a recurrent
step or a chunkwise call does not page-fault on fresh memory every time (:mod:`retnet_mini._allocator`;
``RETNET_MINI_KEEP_FREED_MEMORY=0`` refuses it).
"""
from . import _allocator

_allocator._at_import()

from .decay import decay_matrix, experiment_log_decay, paper_log_decay
from .retention import (
    chunkwise_retention,
    parallel_retention,
    read_state,
    recurrent_retention,
    state_dtype,
    update_state,
)
from .model import RetNetConfig, RetNetLM, RetNetState
from .transformer import KVCache, TransformerConfig, TransformerLM

# The one home of the version: pyproject.toml reads it for the wheel's metadata (README, "Releasing").
__version__ = "0.1.0"
