"""Data-parallel fits on ``torch.distributed``: ``fit(..., distributed=True)``.

Run one process per CPU core or GPU under ``torchrun`` (or any initialised process group:
gloo on CPU, NCCL on GPUs). Every rank runs the same program on the same data; per step:

* **Batches.** Each subsampled plate (``pyro.plate(name, N, subsample_size=B)``) draws its
  global batch of ``B`` indices from a per-epoch permutation of ``range(N)`` that every rank
  computes alike (seeded by the fit's seed, the plate and the epoch: O(N) work once per epoch,
  O(B) per step); rank ``r`` of ``W`` uses the ``r``-th of ``W`` equal, disjoint slices, so the
  global batch is the user's ``subsample_size`` and each rank evaluates ``B / W`` data points
  (Pyro then scales them by ``N / (B / W)``). ``B`` must be divisible by ``W``. An epoch's
  last ``N mod B`` points wait for the next epoch's permutation (``drop_last``).
* **Gradients.** Every parameter's gradient (guide and model: ``pyro.param``, ``PyroModule``,
  amortized networks) is averaged over the ranks with one ``all_reduce`` of one flat buffer,
  which also carries each rank's loss and status (failed, non-finite, Ctrl-C). The average of
  the ranks' unbiased estimates with batch ``B / W`` each equals the estimate from the global
  batch ``B`` (the data terms exactly; the prior and entropy terms with ``W`` particles).
* **Parameters** start identical (broadcast from rank 0 after the first trace) and stay so:
  each rank applies the same update to the same values.
* **Random streams.** Rank 0 runs on the fit's seed, rank ``r > 0`` on a seed derived from
  ``(seed, r)``: particles differ per rank, and a run is reproducible for a given seed and
  world size.
* **Failures.** An error, a non-finite loss or gradient, or Ctrl-C on any rank stops every
  rank at the same step: the step is dropped everywhere, each rank raises the same kind of
  error naming the rank and the step, and every rank keeps the last good state. Ctrl-C is
  held for the whole run and travels in the next step's buffer, so ranks never wait on a
  peer that has left.
* **Outputs.** Only rank 0 shows progress and writes checkpoints (with every rank's random
  state, so a resumed run continues each stream); every rank returns the result.

Per-datum guide parameters (a mean-field guide over a subsampled plate's local latents) are
replicated on every rank and their gradients averaged like the others: correct, but the
communication and the optimizer work grow with N; for large N use an amortized guide.
A model without a subsampled plate is refused (every rank would do the same work).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
import torch.distributed as dist

from ppl_vi.minibatch import EpochBatches, batch_indices

__all__ = ["DataParallel", "batch_indices", "rank_seed"]

#: Status slots at the end of the gradient buffer.
LOSS, FAILED, INTERRUPTED = range(3)
#: Buffers up to this many elements are summed by an all_gather and a local sum: on gloo a
#: small all_reduce costs about three all_gathers (1.3-1.7 ms against 0.55 ms for 30 values
#: between two processes on one machine, benchmarks/distributed.py); larger ones use all_reduce.
GATHER_MAX = 1 << 16


#: ``all_gather_single`` where torch has it (``all_gather_into_tensor`` is deprecated there).
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def rank_seed(seed: int | None, rank: int) -> int | None:
    """The seed of rank ``rank``'s random stream: the fit's seed on rank 0, a seed derived
    from ``(seed, rank)`` (NumPy's ``SeedSequence``) elsewhere."""
    if seed is None or rank == 0:
        return seed
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


class DataParallel:
    """The collective side of a data-parallel fit on the current ``torch.distributed`` group.

    Built by :class:`~ppl_vi.engine.Engine` when ``distributed=True``; see the module's text
    for what it does per step.
    """

    def __init__(self, group=None):
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group: launch "
                "with `torchrun --nproc-per-node N script.py` (or `ppl-vi fit ... --nproc N`) "
                "and call torch.distributed.init_process_group() first (backend 'gloo' on CPU, "
                "'nccl' on GPUs)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world = dist.get_world_size(group)
        self.backend = str(dist.get_backend(group))
        self.epochs: EpochBatches | None = None  # set up with the model's plates
        self.batches: dict = {}  # plate -> global batch, as seen in the model
        self.comm_device = torch.device("cpu")
        self.refused: Exception | None = None  # a plate whose batch the ranks cannot share

    def device(self, device: torch.device) -> torch.device:
        """``cuda`` without an index (``device="auto"`` on a GPU machine) means this rank's own
        GPU: ``LOCAL_RANK`` (set by torchrun), else the rank modulo the visible devices."""
        if device.type != "cuda" or device.index is not None:
            return device
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        return torch.device("cuda", local % torch.cuda.device_count())

    def check_device(self, device: torch.device) -> None:
        self.comm_device = device if self.backend == "nccl" else torch.device("cpu")
        if self.backend == "nccl" and device.type != "cuda":
            raise ValueError(
                f"the process group uses NCCL, which needs CUDA tensors, but the fit runs on "
                f"{device}: use device='cuda' (one GPU per rank, e.g. f'cuda:{{local_rank}}') or "
                "a gloo process group on CPU"
            )

    # -------------------------------------------------------------- batches
    def batch_seed(self, seed: int | None) -> int:
        """The seed of the batch permutations: the fit's seed, or (``seed=None``) a random one
        drawn on rank 0 and shared."""
        if seed is not None:
            return int(seed)
        box = [int(torch.randint(0, 2**62, ()).item())] if self.rank == 0 else [None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return int(box[0])

    def _check_batch(self, name: str, batch: int) -> None:
        self.batches[name] = batch
        if batch % self.world:
            self.refused = ValueError(
                f"plate '{name}' has subsample_size={batch}, which is not divisible by the "
                f"{self.world} processes of the data-parallel fit: use a multiple of "
                f"{self.world} (each process evaluates subsample_size / {self.world} points)"
            )
            raise self.refused

    def shards(self, step: int):
        """Within the block, every subsampled plate found at set-up (and given no explicit
        ``subsample``) uses this rank's slice of step ``step``'s global batch."""
        return self.epochs.context(step, check=self._check_batch)

    # -------------------------------------------------------------- collectives
    def broadcast(self, tensors: list) -> None:
        """Overwrite ``tensors`` with rank 0's values (in place)."""
        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0, group=self.group)

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order."""
        out = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def check_same(self, what: dict) -> None:
        """Raise on every rank when a rank's ``what`` (name -> comparable value) differs from
        rank 0's, naming the rank and the entries."""
        views = self.gather(what)
        for rank, view in enumerate(views):
            diff = sorted(k for k in set(view) | set(views[0]) if view.get(k) != views[0].get(k))
            if diff:
                raise ValueError(
                    f"rank {rank} of the data-parallel fit differs from rank 0 in {diff}: every "
                    "process must run the same model on the same data with the same settings"
                )

    def reduce(self, params: list, loss: float, status: tuple) -> tuple:
        """All-reduce this rank's gradients of ``params`` (same order on every rank; a missing
        gradient counts as absent), its loss and its ``(failed, interrupted)`` flags (a
        non-finite loss or gradient counts as failed).

        Returns ``(mean loss, flag sums, grads)``, where ``grads[i]`` is the mean gradient of
        ``params[i]`` over the ranks that had one (None where none had).
        """
        device = params[0].device if params else torch.device("cpu")
        # the parameters' own dtype (the loss was computed in it too); float64 when mixed
        dtypes = {p.dtype for p in params}
        dtype = dtypes.pop() if len(dtypes) == 1 else torch.float64
        parts, counts = [], []
        for p in params:
            g = p.grad
            counts.append(0.0 if g is None else 1.0)
            parts.append(torch.zeros(p.numel(), dtype=dtype, device=device)
                         if g is None else g.detach().reshape(-1).to(dtype))  # fmt: skip
        tail = torch.tensor(
            [0.0 if math.isnan(loss) else loss, *map(float, status), *counts],
            dtype=dtype,
            device=device,
        )
        buffer = self.sum(torch.cat([*parts, tail]))
        tail = buffer[buffer.numel() - tail.numel() :].tolist()
        flags = tuple(int(round(x)) for x in tail[FAILED : INTERRUPTED + 1])
        grads, offset = [], 0
        for p, count in zip(params, tail[INTERRUPTED + 1 :], strict=True):
            n = p.numel()
            if count:
                grads.append((buffer[offset : offset + n] / self.world).to(p.dtype).view_as(p))
            else:
                grads.append(None)
            offset += n
        return tail[LOSS] / self.world, flags, grads

    def sum(self, buffer: torch.Tensor) -> torch.Tensor:
        """The sum of every rank's ``buffer``, the same bits on every rank."""
        if self.backend == "gloo" and buffer.is_cuda:  # gloo's CPU path on a CUDA fit
            return self.sum(buffer.cpu()).to(buffer.device)
        if buffer.numel() > GATHER_MAX:
            dist.all_reduce(buffer, group=self.group)
            return buffer
        gathered = buffer.new_empty(self.world * buffer.numel())
        _all_gather(gathered, buffer, group=self.group)
        return gathered.view(self.world, -1).sum(0)

    def agree(self, stop: bool, failed: bool) -> tuple[bool, bool]:
        """Whether any rank wants to stop, and whether any rank's policies failed."""
        flags = torch.tensor([float(stop), float(failed)], dtype=torch.float64)
        flags = self.sum(flags.to(self.comm_device))
        return bool(flags[0].item()), bool(flags[1].item())
