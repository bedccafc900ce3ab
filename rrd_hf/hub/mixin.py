"""`HubMixin`: the Trainer writes rrd_hf's run record and card on every save and pushes only the clean student."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..data.provenance import known_dataset_name
from ..runs.record import (
    RUN_INFO_NAME,
    evaluation_facts,
    hardware_description,
    loss_terms_record,
    runtime_from_logs,
    training_args_dict,
    training_facts,
    write_training_args,
)
from ..runs.results import summarize_log_history
from .card import build_model_card
from .errors import HubPublishError
from .upload import push_to_hub

logger = logging.getLogger(__name__)


def architecture_of(model) -> str | None:
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__ if model is not None else None
    return getattr(config, "zoo_name", None) or (getattr(config, "architectures", None) or [type(model).__name__])[0]


class HubMixin:
    """Put in front of `Trainer` (`class RRDTrainer(HubMixin, Trainer)`): honest cards and clean-student pushes.

    * `create_model_card` writes rrd_hf's card (teacher as `teacher_model`, hyper-parameters, best/last accuracy,
      hardware, training time) to `output_dir/README.md` instead of transformers' fine-tuning card.
    * `push_to_hub` saves the model, writes the card and publishes through `rrd_hf.hub.push_to_hub`: only the clean
      student goes up (no heads, memory, optimizer, `training_args.bin` or checkpoints).
    * Pushes during training (`args.push_to_hub` with `hub_strategy` every_save/checkpoint/all_checkpoints) also
      publish only the clean student of the checkpoint; resumable checkpoints are never uploaded.
    * Every save also writes `training_args.json` (the arguments as data, beside Trainer's pickled
      `training_args.bin`) and `_rrd_run.json` (hardware, world size, teacher, dataset, what was evaluated, log
      summary), so `rrd-hf push FOLDER` later gives the same card without unpickling anything.

    `hub_api`: an `HfApi`-like object to use (tests); default `transformers.trainer.hf_api()`.
    `hub_trust_remote_code`: set True to let export validation import the model's own `.py` files, needed only for
    an architecture that neither transformers nor rrd_hf knows (see `rrd_hf.hub.export_student`).
    """

    hub_api = None
    hub_trust_remote_code = False

    def _rrd_hub_api(self):
        if self.hub_api is not None:
            return self.hub_api
        import transformers.trainer

        return transformers.trainer.hf_api()

    def _rrd_teacher_module(self):
        """The teacher model (`RRDTrainer.teacher` is a `FrozenTeacher` holding it as `.model`), or None."""
        teacher = getattr(self, "teacher", None)
        return getattr(teacher, "model", teacher)

    def _rrd_teacher_name(self) -> str | None:
        teacher = self._rrd_teacher_module()
        name = getattr(teacher, "name_or_path", None) or getattr(getattr(teacher, "config", None), "_name_or_path", None)
        return name or getattr(self.args, "teacher_model_name_or_path", None)

    def _rrd_run_info(self, dataset: str | None = None) -> dict:
        world_size = getattr(getattr(self, "accelerator", None), "num_processes", None) or self.args.world_size
        history = list(self.state.log_history)
        return {
            "hardware": hardware_description(self.args.device, world_size),
            "world_size": world_size,
            "teacher": self._rrd_teacher_name(),
            "teacher_local": bool(self._rrd_teacher_name()) and os.path.isdir(self._rrd_teacher_name()),
            "teacher_architecture": architecture_of(self._rrd_teacher_module()),
            # "" = built from a config (random init); a path/id = the weights it started from
            "student_init": getattr(self.model, "name_or_path", None),
            "dataset": dataset or known_dataset_name(self.train_dataset),
            "global_step": self.state.global_step,
            "epoch": self.state.epoch,
            "train_runtime": runtime_from_logs(history),
            "summary": summarize_log_history(history),
            **self._rrd_evaluation(),
            **training_facts(self.train_dataset),
            **loss_terms_record(self.args),
            "training_args": training_args_dict(self.args),
        }

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Trainer's evaluation; also notes what was evaluated (images, split) for the run record and the card."""
        if metric_key_prefix == "eval" and not isinstance(eval_dataset, str):  # eval_accuracy lands in the history
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if not isinstance(dataset, dict):  # several sets log eval_<name>_accuracy, which the card does not use
                facts = tuple(evaluation_facts(dataset).items())
                self._rrd_evaluated = getattr(self, "_rrd_evaluated", set()) | {facts}
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def _rrd_evaluation(self) -> dict:
        """What the evaluations of this run measured; nothing (None) when they measured different sets."""
        seen = getattr(self, "_rrd_evaluated", set())
        if len(seen) == 1:
            return dict(next(iter(seen)))
        if seen:
            return {"eval_num_samples": None, "eval_split": None, "eval_split_size": None}
        dataset = self.eval_dataset  # not evaluated yet in this process: the set Trainer evaluates by default
        return evaluation_facts(None if isinstance(dataset, dict) else dataset)

    def _rrd_write_run_info(self, output_dir: str, dataset: str | None = None) -> None:
        try:
            with open(os.path.join(output_dir, RUN_INFO_NAME), "w", encoding="utf-8") as handle:
                json.dump(self._rrd_run_info(dataset), handle, indent=2)
        except Exception as error:  # the card can do without it; saving must not fail for it
            logger.warning("could not write %s in %s: %s", RUN_INFO_NAME, output_dir, error)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            output_dir = output_dir if output_dir is not None else self.args.output_dir
            write_training_args(self.args, output_dir)
            self._rrd_write_run_info(output_dir)

    def _rrd_card(self, folder: str, *, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                  dataset_tags=None, dataset=None, **card_kwargs):
        info = self._rrd_run_info()
        first = lambda value: value[0] if isinstance(value, (list, tuple)) and value else value  # noqa: E731
        kwargs = dict(
            repo_id=self._rrd_repo_id(),
            model_name=model_name,
            teacher=card_kwargs.pop("teacher", None) or info["teacher"],
            dataset=first(dataset_tags) or first(dataset) or info["dataset"],
            run_record=info,
            log_history=list(self.state.log_history),
            base_model=finetuned_from,
            tags=self._rrd_tags(tags),
            language=language,
        )
        if license is not None:
            kwargs["license"] = license
        kwargs.update(card_kwargs)
        return build_model_card(folder, **kwargs)

    def _rrd_tags(self, tags) -> list[str]:
        """User tags plus tags added to the model (`add_model_tags`), minus the trainer's generic ones (the card
        decides about `knowledge-distillation`/`rrd` from what the run did)."""
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        own = set(getattr(self, "_tag_names", None) or [])
        for tag in getattr(self.model, "model_tags", None) or []:
            if tag not in own and tag not in tags:
                tags.append(tag)
        return tags

    def create_model_card(self, language=None, license=None, tags=None, model_name=None, finetuned_from=None,
                          tasks=None, dataset_tags=None, dataset=None, dataset_args=None, **kwargs) -> None:
        """Write rrd_hf's card to `output_dir/README.md` (process 0 only). `finetuned_from` sets `base_model` (only
        for a student initialised from that checkpoint); `dataset_tags`/`dataset` name the training set."""
        if not self.is_world_process_zero():
            return
        output_dir = self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        card = self._rrd_card(output_dir, language=language, license=license, tags=tags, model_name=model_name,
                              finetuned_from=finetuned_from, dataset_tags=dataset_tags, dataset=dataset, **kwargs)
        card.save(os.path.join(output_dir, "README.md"))
        named = dataset_tags or dataset
        self._rrd_write_run_info(output_dir, dataset=named[0] if isinstance(named, (list, tuple)) and named else named)

    def _rrd_repo_id(self) -> str:
        return getattr(self, "hub_model_id", None) or self.args.hub_model_id or Path(self.args.output_dir).absolute().name

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token: str | None = None,
                    revision: str | None = None, private: bool | None = None, **kwargs):
        """Save the model, write the card, publish the clean student of `output_dir` (see `rrd_hf.hub.push_to_hub`).

        `kwargs` go to `create_model_card` (license, tags, dataset, teacher, ...), plus `api=` for a Hub client and
        `trust_remote_code=` (default `hub_trust_remote_code`).
        With `blocking=False` the upload runs in the Hub client's background thread and a `Future` is returned.
        """
        api = kwargs.pop("api", None) or self._rrd_hub_api()
        trust_remote_code = kwargs.pop("trust_remote_code", self.hub_trust_remote_code)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        kwargs.pop("model_name", None)
        self.create_model_card(model_name=self._rrd_repo_id().split("/")[-1], **kwargs)
        if hasattr(self, "_finish_current_push"):
            self._finish_current_push()
        push = dict(
            api=api, private=private if private is not None else self.args.hub_private_repo,
            token=token if token is not None else self.args.hub_token,
            revision=revision if revision is not None else self.args.hub_revision,
            commit_message=commit_message or "End of training",
            card=os.path.join(self.args.output_dir, "README.md"), trust_remote_code=trust_remote_code,
        )
        if not blocking and hasattr(api, "run_as_future"):
            return api.run_as_future(push_to_hub, self.args.output_dir, self._rrd_repo_id(), **push)
        return push_to_hub(self.args.output_dir, self._rrd_repo_id(), **push)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Checkpoint-time pushes (`args.push_to_hub`): the clean student of the checkpoint, never the checkpoint.

        Synchronous (unlike Trainer's background push): the checkpoint may be rotated away right after this returns.
        A failed push is logged and training continues."""
        from transformers.trainer_utils import HubStrategy

        if not self.is_world_process_zero() or self.args.hub_strategy == HubStrategy.END:
            return
        if self.args.hub_strategy in (HubStrategy.CHECKPOINT, HubStrategy.ALL_CHECKPOINTS):
            logger.warning("hub_strategy=%s would upload resumable checkpoints (optimizer, RRD heads and memory): "
                           "rrd_hf uploads only the clean student.", self.args.hub_strategy)
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        step = self.state.global_step
        try:
            push_to_hub(checkpoint_folder, self._rrd_repo_id(), api=self._rrd_hub_api(), token=self.args.hub_token,
                        revision=self.args.hub_revision, commit_message=f"Training in progress, step {step}",
                        card=self._rrd_card(checkpoint_folder), trust_remote_code=self.hub_trust_remote_code)
        except HubPublishError as error:  # training goes on; the final push will report again
            logger.warning("push of step %d failed: %s", step, error)
