"""The training-step counter that schedules the RFM (and WeCLIP+'s self-training): a saved buffer
(``training_step``, so it travels with checkpoints and averaged models) mirrored on the host, so that a step reads
it without a device sync."""

from __future__ import annotations

import torch


def _version_of(tensor: torch.Tensor) -> int | None:
    """``tensor``'s in-place write counter (torch bumps it on every in-place write); None for an inference tensor,
    which keeps none."""
    return None if tensor.is_inference() else tensor._version


class TrainingStepMixin:
    """``training_step`` (a saved long buffer) counts training forwards: train mode, gradients enabled, labels
    given. The count lives on the host too, eager under `torch.compile`, whose graphs would otherwise specialise
    on (and be recompiled for) every step's value."""

    def _init_training_step(self) -> None:
        """Register the counter at 0."""
        self.register_buffer("training_step", torch.zeros((), dtype=torch.long))
        # host mirror: (the buffer, its write counter, its value)
        self._step_mirror: tuple[torch.Tensor, int | None, int] | None = None

    def set_training_step(self, step: int) -> None:
        """Set the training-step counter (e.g. to resume a schedule); RFM starts at ``config.rfm_start_step``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}.")
        self._write_step(int(step))

    @torch.compiler.disable
    def _current_step(self) -> int:
        """The training-step counter, mirrored on the host: the buffer is read (a device sync) only when it was
        replaced (``model.training_step = ...``, ``.to(device)``) or written in place (``fill_``, ``copy_``,
        ``load_state_dict``, an averaged model's update) since the mirror was taken, so outside writes count."""
        buffer, mirror = self.training_step, self._step_mirror
        version = _version_of(buffer)
        if mirror is None or mirror[0] is not buffer or version is None or mirror[1] != version:
            self._step_mirror = mirror = (buffer, version, int(buffer))
        return mirror[2]

    def _write_step(self, step: int) -> None:
        """Write ``step`` to the buffer and mirror it (with the buffer's write counter after the write)."""
        buffer = self.training_step
        buffer.fill_(step)
        self._step_mirror = (buffer, _version_of(buffer), step)

    @torch.compiler.disable
    def _count_training_forward(self, labelled: bool) -> None:
        """Count a forward where it is a training step: train mode, gradients enabled and ``labelled`` (weak or
        pixel labels given). A forward without labels or gradients (a pipeline or `no_grad` call on a model left in
        train mode) leaves the schedule where it is."""
        if self.training and torch.is_grad_enabled() and labelled:
            self._write_step(self._current_step() + 1)
