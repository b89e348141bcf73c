"""Per-step probes that stay on the device until they are published.

Every step the engine records the loss (``loss.detach()``) and the gradient L2 norm of every
trainable parameter with one fused ``torch._foreach_norm`` into a preallocated buffer. No
``.item()``: on CUDA a host sync per step would stall the GPU queue. Every publish (a chunk
of steps), one copy moves the chunk to the host, where per-parameter norms are combined into
per-layer norms; the drift of each layer from its starting weights is computed then too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["StepProbes", "DriftProbe"]


class StepProbes:
    """Loss and per-layer gradient norms, buffered on the device.

    Parameters
    ----------
    layers
        ``(layer name, parameters)`` pairs: the parameterised layers of the model.
    capacity
        Steps buffered before :meth:`flush` must be called.
    device
        Where the buffers live (the training device).
    """

    def __init__(self, layers: Sequence[tuple[str, Sequence[nn.Parameter]]], capacity: int,
                 device: torch.device, lr_groups: Sequence[dict] = ()) -> None:
        self.layer_names = tuple(name for name, _ in layers)
        self.params: list[nn.Parameter] = [p for _, ps in layers for p in ps]
        owner = np.array([i for i, (_, ps) in enumerate(layers) for _ in ps], dtype=np.int64)
        self._owner = owner
        self.capacity = int(capacity)
        self.device = device
        # one buffer, a row per step: the loss, then a column per parameter (one stack writes a row)
        self._buffer = torch.empty(self.capacity, 1 + max(1, len(self.params)), device=device, dtype=torch.float32)
        self.loss = self._buffer[:, 0]
        self.norms = self._buffer[:, 1:]
        # on the CPU the buffer's own memory as numpy: a host loss is written there without a torch op
        self._host = self._buffer.numpy() if device.type == "cpu" else None
        self.steps = np.empty(self.capacity, dtype=np.int64)
        # one optimizer param group per LR column (host numbers: reading them costs no sync)
        self.lr_groups = list(lr_groups)
        self.lrs = np.empty((self.capacity, len(self.lr_groups)), dtype=np.float64)
        self.n = 0
        self._zero = torch.zeros((), device=device)
        self.refresh()

    def refresh(self) -> None:
        """Re-read which parameters are trainable (call after freezing or unfreezing).

        Must be called with an empty buffer (after :meth:`flush`): columns of the buffer map to
        the trainable parameters at the time of recording.
        """
        assert self.n == 0, "flush() before changing the trainable set"
        self.active = [i for i, p in enumerate(self.params) if p.requires_grad]
        self._active_params = [self.params[i] for i in self.active]
        self._active_owner = self._owner[self.active] if self.active else np.empty(0, np.int64)
        # one view per buffer row, made once: a step then indexes nothing
        k = len(self._active_params)
        self._rows = [self._buffer[j, :1 + k] for j in range(self.capacity)]
        self._norm_rows = [row[1:] for row in self._rows]
        self._loss_slots = [row[0] for row in self._rows]

    @property
    def full(self) -> bool:
        return self.n >= self.capacity

    def record(self, step: int, loss: torch.Tensor) -> None:
        """Store this step's loss and gradient norms (device ops only: one fused norm, one stack).

        Each operation counts: run between the step's kernels, a few Python lines cost several
        times what they cost warm (``benchmarks/README.md``)."""
        j = self.n
        zero = self._zero
        grads = [p.grad if p.grad is not None else zero for p in self._active_params]
        torch.stack([loss.detach(), *(torch._foreach_norm(grads) if grads else ())], out=self._rows[j])
        self.steps[j] = step
        if self.lr_groups:
            self.lrs[j] = [g["lr"] for g in self.lr_groups]
        self.n = j + 1

    def record_gradients(self, step: int) -> None:
        """The first half of :meth:`record`, for loops whose loss is known only after the optimizer
        step (a watched loop, a framework's callback): this step's gradient norms (and LRs) into
        the next row, at the optimizer step, whatever the loop does with ``.grad`` afterwards.
        :meth:`record_loss` completes the row."""
        j = self.n
        if self._active_params:
            grads = [p.grad for p in self._active_params]
            try:
                norms = torch._foreach_norm(grads)
            except TypeError:  # a trainable parameter without a gradient this step (None): its norm is 0
                norms = torch._foreach_norm([self._zero if g is None else g for g in grads])
            torch.stack(norms, out=self._norm_rows[j])
        self.steps[j] = step
        if self.lr_groups:
            self.lrs[j] = [g["lr"] for g in self.lr_groups]

    def record_loss(self, loss: torch.Tensor) -> None:
        """The row :meth:`record_gradients` began: its loss (a device copy, no sync)."""
        loss = loss.detach()
        self._loss_slots[self.n].copy_(loss if loss.dim() == 0 else loss.reshape(()))
        self.n += 1

    def record_loss_value(self, value: float) -> None:
        """:meth:`record_loss` for a loss the host holds (a number): written into the buffer's
        memory on the CPU, filled on a device (no sync either way)."""
        if self._host is not None:
            self._host[self.n, 0] = value
        else:
            self._loss_slots[self.n].fill_(value)
        self.n += 1

    def flush(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Move the buffered chunk to the host (one sync); return ``(steps, losses, layer norms,
        LRs)`` where ``LRs`` has one column per LR group given at construction.

        Layer norms are ``sqrt(sum of squared parameter norms)`` over each layer's trainable
        parameters; a layer with none (frozen) is NaN.
        """
        n = self.n
        steps = self.steps[:n].copy()
        lrs = self.lrs[:n].copy()
        if n == 0:
            return steps, np.empty(0, np.float32), np.empty((0, len(self.layer_names)), np.float32), lrs
        k = len(self.active)
        host = self._host[:n, :1 + k] if self._host is not None else self._buffer[:n, :1 + k].cpu().numpy()
        losses = host[:, 0].copy()
        layer = np.full((n, len(self.layer_names)), np.nan, dtype=np.float64)
        if k:
            sq = host[:, 1:].astype(np.float64) ** 2
            acc = np.zeros((n, len(self.layer_names)))
            np.add.at(acc.T, self._active_owner, sq.T)
            has = np.zeros(len(self.layer_names), bool)
            has[self._active_owner] = True
            layer[:, has] = np.sqrt(acc[:, has])
        self.n = 0
        return steps, losses, layer.astype(np.float32), lrs


class DriftProbe:
    """Relative distance of each layer from its starting weights: ``||w - w0|| / ||w0||``.

    ``w0`` is a copy of the weights when the probe is made (the pretrained weights, or a new
    head's initialisation), kept only for the parameters that can move (trainable ones; a
    frozen parameter's distance is exactly 0 and is not read). :meth:`follow` adds the
    parameters unfreezing makes trainable, before they move.
    """

    def __init__(self, layers: Sequence[tuple[str, Sequence[nn.Parameter]]]) -> None:
        self.layer_names = tuple(name for name, _ in layers)
        self.params = [p for _, ps in layers for p in ps]
        self._owner = np.array([i for i, (_, ps) in enumerate(layers) for _ in ps], dtype=np.int64)
        with torch.no_grad():
            weights = [p.detach() for p in self.params]
            ref = torch.stack(torch._foreach_norm(weights)).double().cpu().numpy() if self.params else np.zeros(0)
        acc = np.zeros(len(self.layer_names))
        np.add.at(acc, self._owner, ref**2)
        self._ref = np.sqrt(acc)
        self._start: dict[int, torch.Tensor] = {}
        self.follow()

    def follow(self) -> None:
        """Keep ``w0`` of every parameter trainable now (call after unfreezing, before a step)."""
        for i, p in enumerate(self.params):
            if p.requires_grad and i not in self._start:
                self._start[i] = p.detach().clone()
        self._moving = sorted(self._start)

    @torch.no_grad()
    def measure_device(self) -> torch.Tensor:
        """``||w - w0||`` of the parameters that can move, as a device tensor (no host sync);
        :meth:`to_layers` takes it."""
        if not self._moving:
            return torch.zeros(0)
        diffs = torch._foreach_sub([self.params[i].detach() for i in self._moving],
                                   [self._start[i] for i in self._moving])
        return torch.stack(torch._foreach_norm(diffs)).float()

    def to_layers(self, moving: np.ndarray) -> np.ndarray:
        """Each layer's relative drift from :meth:`measure_device`'s distances (0 for the rest)."""
        per_param = np.zeros(len(self.params), dtype=np.float32)
        per_param[self._moving] = moving
        acc = np.zeros(len(self.layer_names))
        np.add.at(acc, self._owner, per_param.astype(np.float64) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.where(self._ref > 0, np.sqrt(acc) / np.where(self._ref > 0, self._ref, 1), np.sqrt(acc))
        return rel.astype(np.float32)
