"""Training: `RRDConfig` (`config`) and `RRDTrainer` (`trainer`), with what the trainer delegates: the objective's
modules (`objective`), two-stage methods (`stages`), the optimizer and schedule (`optimization`), checkpoints and
output folders (`checkpoints`), the NaN guard (`guard`), the logged loss terms (`running_means`), the bookkeeping
callback (`callback`), the student's labels and processor (`student`) and full determinism (`determinism`)."""
