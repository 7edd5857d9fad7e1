"""Sharding a profile's record computation over processes (or GPUs) with accelerate.

Under ``accelerate launch`` (or ``torchrun``) each process takes every n-th record request and
writes to the one record store; records are keyed by their content, so shards never collide, and
a later single-process run finds them all.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def shard(study):
    """Give ``study`` this process's share of the work when several processes were launched."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield ""
        return
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    study.shard = (state.process_index, state.num_processes)
    if state.device.type == "cuda":
        for m in study.p.models:
            study.spec(m).device = str(state.device)  # one GPU per process
    log.info("process %d of %d on %s", state.process_index + 1, state.num_processes, state.device)
    try:
        yield f"shard {state.process_index + 1} of {state.num_processes}"
    finally:
        study.shard = None
        state.wait_for_everyone()
