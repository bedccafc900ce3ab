"""Any image classifier, teacher or student: loading it (`loading`), what inputs it expects and the adapter between
two models' inputs (`inputs`), the classes it predicts (`labels`), reading its activations (`activations`), and the
frozen teacher built from all of these (`teacher`, with its opt-in BatchNorm folding in `batch_norm_folding`)."""
