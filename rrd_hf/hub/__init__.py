"""Publishing students (and teachers) on the Hugging Face Hub: the clean export, an honest model card, one commit.

    from rrd_hf.hub import push_to_hub
    push_to_hub("runs/r8x4", "me/resnet8x4-rrd-cifar100", teacher="me/resnet32x4-cifar100")

    rrd-hf push runs/r8x4 me/resnet8x4-rrd-cifar100 --teacher me/resnet32x4-cifar100
    rrd-hf push runs/r8x4 me/resnet8x4-rrd-cifar100 --export-dir /tmp/export   # offline: write the folder only

One module per job: `objective` (the distillation terms and their names), `facts` (facts as card text, and what
was evaluated), `hyperparameters` (the settings table and the schedule that ran), `card` (`build_model_card`),
`custom_code` (a folder's `.py` files and when loading would run them), `export` (the allow-list, staging,
validation), `upload` (`push_to_hub` and the Hub's errors) and `mixin` (`HubMixin` for the Trainer). The run record
they read is `rrd_hf.runs.record`; `rrd-hf push` is `rrd_hf.commands.push`. docs/publishing.md describes what goes
up, what never does, and what the card claims.
"""

from .card import RRD_CITATION, build_model_card, template_path
from .errors import ExportError, HubPublishError
from .export import export_student
from .mixin import HubMixin
from ..runs.record import RUN_INFO_NAME, hardware_description
from .upload import push_to_hub

__all__ = [
    "HubMixin",
    "HubPublishError",
    "ExportError",
    "build_model_card",
    "export_student",
    "push_to_hub",
    "template_path",
    "hardware_description",
    "RUN_INFO_NAME",
    "RRD_CITATION",
]
