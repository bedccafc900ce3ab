"""Subprocess side of tests/test_models.py: load saved CIFAR checkpoints in a fresh interpreter, print a JSON report.

    python [-I] _models_helpers.py registered MANIFEST   # `import rrd_hf.models`, plain Auto classes
    python -I   _models_helpers.py remote     MANIFEST   # rrd_hf hidden, trust_remote_code=True

In ``remote`` mode, a meta-path finder makes every ``rrd_hf`` import fail before anything else is imported. It
runs before the editable-install finder, so this works however rrd_hf is installed. The checkpoints must then
be loadable from the copied modeling files alone, as on a machine that only has torch + transformers.

This file must not import rrd_hf at module level.
"""

import json
import sys

# One checkpoint per family for the save/load tests. ResNet50 is shrunk to one block per stage: the same code
# and 2048-d features, at a fraction of the I/O.
FAMILY_REPS = {
    "resnet8": {},
    "wrn_16_2": {},
    "vgg8": {},
    "ResNet50": {"num_blocks": [1, 1, 1, 1]},
    "MobileNetV2": {},
    "ShuffleV1": {},
    "ShuffleV2": {},
}


class _HideRrdHf:
    def find_spec(self, name, path=None, target=None):
        if name == "rrd_hf" or name.startswith("rrd_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/_models_helpers.py)", name=name)
        return None


def main() -> None:
    mode, manifest_path = sys.argv[1], sys.argv[2]
    if mode not in ("registered", "remote"):
        raise SystemExit(f"unknown mode {mode!r}")
    report: dict = {"mode": mode}

    if mode == "remote":
        sys.meta_path.insert(0, _HideRrdHf())
        try:
            import rrd_hf  # noqa: F401

            report["rrd_hf_importable"] = True
        except ImportError:
            report["rrd_hf_importable"] = False
    else:
        import rrd_hf.models  # noqa: F401  (registers the Auto classes)

        report["rrd_hf_importable"] = True

    import numpy as np
    import PIL.Image
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification, pipeline

    with open(manifest_path) as f:
        manifest = json.load(f)
    trust = mode == "remote"

    if trust:
        # Without the opt-in, a process that lacks rrd_hf must refuse to run the shipped code.
        first_dir = next(iter(manifest["models"].values()))["dir"]
        try:
            AutoModelForImageClassification.from_pretrained(first_dir, trust_remote_code=False)
            report["refused_without_trust"] = False
        except ValueError as err:
            report["refused_without_trust"] = "trust_remote_code" in str(err)

    results = {}
    for name, entry in manifest["models"].items():
        model = AutoModelForImageClassification.from_pretrained(entry["dir"], trust_remote_code=trust).eval()
        expected = load_file(entry["tensors"])
        x = expected["pixel_values"]
        with torch.no_grad():
            out = model(x, output_hidden_states=True)
            pre = model(x, preact=True)
        n_hidden = sum(1 for k in expected if k.startswith("hidden."))
        n_pre = sum(1 for k in expected if k.startswith("preact."))

        def close(a, b):
            # Not bitwise: another process may pick different conv kernels or thread splits. The tests make
            # activations O(1), so 1e-5 is far below what a missing weight or BN statistic would change.
            return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-5, atol=1e-5))

        results[name] = {
            "class_module": type(model).__module__,
            "class_name": type(model).__name__,
            "feature_dim": int(model.config.feature_dim),
            "logits_equal": close(out.logits, expected["logits"]),
            "hidden_equal": len(out.hidden_states) == n_hidden
            and all(close(h, expected[f"hidden.{i}"]) for i, h in enumerate(out.hidden_states)),
            "preact_equal": len(pre.hidden_states) == n_pre
            and all(close(h, expected[f"preact.{i}"]) for i, h in enumerate(pre.hidden_states)),
            "logits_max_abs_diff": float((out.logits - expected["logits"]).abs().max()),
        }
    report["models"] = results

    pipe_dir = manifest["pipeline_dir"]
    classifier = pipeline("image-classification", model=pipe_dir, trust_remote_code=trust)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))
    report["pipeline"] = classifier(image, top_k=3)

    report["rrd_hf_modules_loaded"] = sorted(m for m in sys.modules if m == "rrd_hf" or m.startswith("rrd_hf."))
    print("RESULT_JSON=" + json.dumps(report))


if __name__ == "__main__":
    main()
