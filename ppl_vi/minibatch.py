"""Mini-batch indices from per-epoch permutations: O(N) work once per epoch, O(B) per step.

Pyro's ``pyro.plate(name, N, subsample_size=B)`` draws ``torch.randperm(N)[:B]`` at every step,
so a step's cost grows with N even when the model only touches B points. A fit instead takes
step ``s``'s batch from the permutation of epoch ``s // (N // B)`` (seeded by the fit's seed, the
plate's name and the epoch): every point is used once per epoch, the last ``N mod B`` points of
an epoch wait for the next permutation (``drop_last``), and the indices depend only on the seed
and the step, so a resumed fit, a compiled step and every rank of a data-parallel fit see the
same batches.

Examples
--------
>>> import torch
>>> from ppl_vi.minibatch import batch_indices
>>> epoch = [batch_indices(seed=0, plate="data", step=s, size=10, batch=5) for s in (0, 1)]
>>> sorted(torch.cat(epoch).tolist())  # every point once per epoch
[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
>>> torch.equal(epoch[0], batch_indices(seed=0, plate="data", step=2, size=10, batch=5))
False
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from ppl_vi.infer_util import plate_indices

__all__ = ["EpochBatches", "batch_indices"]


def _epoch_seed(seed: int, plate: str, epoch: int) -> int:
    words = [int(seed) & 0xFFFFFFFF, zlib.crc32(plate.encode()), int(epoch)]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0] >> 1)


def _permutation(seed: int, plate: str, epoch: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(_epoch_seed(seed, plate, epoch))
    return torch.randperm(size, generator=gen)


def _slice(step: int, size: int, batch: int, rank: int, world: int) -> tuple[int, int, int]:
    """``(epoch, start, stop)``: where rank ``rank``'s indices of step ``step`` lie in the
    epoch's permutation."""
    epoch, k = divmod(int(step), size // batch)
    share = batch // world
    start = k * batch + rank * share
    return epoch, start, start + share


def batch_indices(
    seed: int, plate: str, step: int, size: int, batch: int, rank: int = 0, world: int = 1
) -> torch.Tensor:
    """The indices of plate ``plate`` (``size`` points, global batch ``batch``) that rank
    ``rank`` of ``world`` uses at step ``step`` (0-based).

    Step ``s`` of epoch ``e = s // (size // batch)`` takes the ``(s mod (size // batch))``-th
    block of ``batch`` entries of epoch ``e``'s permutation; rank ``r`` takes the ``r``-th of
    ``world`` equal slices of that block.
    """
    if batch % world:
        raise ValueError(f"the batch {batch} is not divisible by {world} processes")
    epoch, start, stop = _slice(step, size, batch, rank, world)
    return _permutation(seed, plate, epoch, size)[start:stop].clone()


class EpochBatches:
    """Per-step indices of a model's subsampled plates, from cached per-epoch permutations.

    Parameters
    ----------
    seed : int
        Seed of the permutations.
    plates : collection of str
        The plates to take over (those found subsampling when the model was traced); other
        plates, and plates given explicit ``subsample`` indices, are left to Pyro.
    rank, world : int
        This process's slice of each batch in a data-parallel fit (``0, 1``: the whole batch).
    device : torch.device, optional
        Where the indices live (the fit's device), unless the plate names its own.
    """

    def __init__(self, seed: int, plates, rank: int = 0, world: int = 1, device=None):
        self.seed = int(seed)
        self.plates = frozenset(plates)
        self.rank, self.world, self.device = int(rank), int(world), device
        self._perms: dict = {}  # plate -> (epoch, size, permutation on its device)

    def indices(self, name: str, size: int, batch: int, step: int, device=None) -> torch.Tensor:
        """This rank's indices of plate ``name`` at step ``step`` (a view of the epoch's
        permutation, on ``device`` or the batches' device)."""
        device = torch.device(device) if device is not None else self.device
        epoch, start, stop = _slice(step, size, batch, self.rank, self.world)
        cached = self._perms.get(name)
        if (
            cached is None
            or cached[:2] != (epoch, size)
            or (device is not None and cached[2].device != device)
        ):  # O(size) once per epoch, O(batch) per step
            perm = _permutation(self.seed, name, epoch, size)
            cached = self._perms[name] = (epoch, size, perm if device is None else perm.to(device))
        return cached[2][start:stop]

    def wants(self, name, size, subsample_size, subsample) -> bool:
        return (
            name in self.plates
            and subsample is None
            and size is not None
            and subsample_size is not None
            and subsample_size < size
        )

    def context(self, step: int, check=None):
        """Within the block, the plates use step ``step``'s batches; ``check(name, batch)``
        sees each plate's batch size first (and may refuse it)."""

        def choose(name, size, subsample_size, subsample, device):
            if self.wants(name, size, subsample_size, subsample):
                if check is not None:
                    check(name, subsample_size)
                subsample = self.indices(name, size, subsample_size, step, device)
                subsample_size = len(subsample)
            return subsample_size, subsample

        return plate_indices(choose)
