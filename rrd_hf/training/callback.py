"""What RRDTrainer does at Trainer's hook points: methods in training mode, the NaN guard, the epoch, gradients."""

from __future__ import annotations

from transformers import TrainerCallback

__all__ = ["BookkeepingCallback"]


class BookkeepingCallback(TrainerCallback):
    """The trainer's own bookkeeping at Trainer's hook points (see each method)."""

    def __init__(self, trainer: "RRDTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        trainer.methods.train()
        trainer.guard.reset(state.global_step)
        if trainer.stage is None and trainer.init_stage_history and not any(
                "init_stage_loss" in log for log in state.log_history):
            state.log_history[:0] = [dict(log) for log in trainer.init_stage_history]

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer.begin_epoch(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        # Trainer zeroes only the student's gradients: the methods' would accumulate across optimizer steps.
        self.trainer.methods.zero_grad(set_to_none=True)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.check_finite_before_step()
