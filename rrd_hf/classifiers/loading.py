"""Loading image classifiers (students, teachers, checkpoints) from folders and the Hub, with errors that say what
to do. Code shipped in a folder (`auto_map`) never runs unless the caller passes `trust_remote_code=True`."""

from __future__ import annotations

import os

from safetensors import SafetensorError
from transformers import AutoModelForImageClassification, PreTrainedModel

__all__ = ["load_image_classifier"]


def load_image_classifier(name_or_path: str | os.PathLike, role: str = "model", **kwargs) -> PreTrainedModel:
    """`AutoModelForImageClassification.from_pretrained` for a local folder or a Hub id, failing with the reason."""
    from .. import models as _models  # noqa: F401  (registers rrd_hf's architectures with the Auto classes)

    text = os.fspath(name_or_path)
    if os.path.isdir(text) and not os.path.isfile(os.path.join(text, "config.json")):
        checkpoints = sorted(name for name in os.listdir(text) if name.startswith("checkpoint-"))
        hint = (f" It holds training checkpoints ({', '.join(checkpoints[-3:])}): pass one of them, or the folder "
                "save_model wrote." if checkpoints else " Pass the folder that save_pretrained/save_model wrote.")
        raise OSError(f"the {role} folder {text!r} has no config.json, so it is not a saved model.{hint}")
    kwargs.setdefault("trust_remote_code", False)  # never a prompt, never the folder's code unless asked
    try:
        return AutoModelForImageClassification.from_pretrained(text, **kwargs)
    except SafetensorError as error:
        raise OSError(
            f"the weights of the {role} {text!r} cannot be read ({error}): the safetensors file is truncated or "
            "corrupt (an interrupted copy or save?). Copy or save the model again."
        ) from error
    except (OSError, ValueError) as error:
        if not kwargs["trust_remote_code"] and "trust_remote_code" in str(error):
            raise OSError(
                f"the {role} {text!r} needs the Python code saved with it (config.json's auto_map) for an architecture "
                "neither transformers nor rrd_hf knows, and rrd_hf runs a folder's code only when you say so. Read "
                "that code; if you trust it, load the model yourself with AutoModelForImageClassification."
                "from_pretrained(..., trust_remote_code=True) and pass the module (or pass "
                "trust_remote_code=True to load_image_classifier / teacher_model_init_kwargs)."
            ) from None
        raise OSError(
            f"could not load the {role} {text!r} as an AutoModelForImageClassification: {error}\n"
            "Pass a local folder written by save_pretrained (or a module), or a Hub id while the Hub is reachable "
            "(HF_HUB_OFFLINE must be unset)."
        ) from error
