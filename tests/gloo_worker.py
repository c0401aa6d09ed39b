"""Work for processes that tests/test_distributed.py spawns into a gloo group; a module of its own so that a spawned
process imports only torch and shared.distributed, not the whole test module."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from shared import distributed


def check_gradient_averaging(rank: int, world_size: int, port: int) -> None:
    """Each rank computes the gradient of its half of a batch; averaged, it must equal the whole batch's."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    ctx, device = distributed.start(force_cpu=True)
    try:
        torch.manual_seed(rank)  # different weights on purpose: the broadcast must make them equal
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 1))
        ctx.broadcast_parameters(model)
        inputs = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))  # the same batch on every rank
        targets = torch.randn(8, 1, generator=torch.Generator().manual_seed(1))
        whole = nn.functional.mse_loss(model(inputs), targets)
        expected = torch.autograd.grad(whole, list(model.parameters()))

        shard = slice(rank, None, world_size)
        nn.functional.mse_loss(model(inputs[shard]), targets[shard]).backward()
        ctx.average_gradients(model)
        for param, grad in zip(model.parameters(), expected, strict=True):
            torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-7)

        assert ctx.sum([1.0, rank], device) == [world_size, sum(range(world_size))]
        assert ctx.gather({"rank": rank}) == [{"rank": r} for r in range(world_size)]
        ctx.check_in_sync(model, device)
        if rank == 1:  # a gradient left unaveraged on one rank: the parameters drift apart
            with torch.no_grad():
                model[0].bias[0] += 1e-3
        with pytest.raises(RuntimeError, match="parameters differ"):
            ctx.check_in_sync(model, device)
    finally:
        distributed.stop()
