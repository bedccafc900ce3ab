"""Evaluation: top-1/top-5 (`metrics`), a checkpoint on a dataset (`checkpoint`), the transfer probe (`probe`) and
the paper's figures (`plots`)."""
