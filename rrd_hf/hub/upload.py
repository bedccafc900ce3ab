"""One commit to the Hub: stage and validate (`export_student`), create the repo, upload, explain failures."""

from __future__ import annotations

import logging
import os
import tempfile

from .card import build_model_card
from .errors import HubPublishError
from .export import export_student

logger = logging.getLogger(__name__)


def default_api():
    from huggingface_hub import HfApi

    from ..version import __version__

    return HfApi(library_name="rrd_hf", library_version=__version__)


def publish_error(error: Exception, repo_id: str, folder: str) -> HubPublishError:
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    intact = f"Nothing was changed locally ({folder} is intact) and no partial commit was made."
    if isinstance(error, OfflineModeIsEnabled) or "offline" in str(error).lower():
        return HubPublishError(
            f"cannot upload to {repo_id}: the Hub is offline (HF_HUB_OFFLINE=1). Unset HF_HUB_OFFLINE and retry, or "
            f"write the clean folder with `rrd-hf push {folder} {repo_id} --export-dir DIR` (rrd_hf.hub.export_student) "
            f"and upload it later with `hf upload {repo_id} DIR`. {intact}")
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            why = "not authorised: log in with `hf auth login` or pass a token (token= / HF_TOKEN) with write access to"
        elif status == 404:
            why = "repository or revision not found:"
        else:
            why = f"the Hub answered HTTP {status}" if status else "the Hub refused the upload"
            why += " for"
        return HubPublishError(f"upload failed, {why} {repo_id}: {error}. {intact}")
    if isinstance(error, (ConnectionError, TimeoutError, OSError)) or type(error).__module__.startswith(("httpx", "requests")):
        return HubPublishError(f"cannot reach the Hub to upload {repo_id} ({type(error).__name__}: {error}): check the "
                               f"network or HF_ENDPOINT. {intact}")
    return HubPublishError(f"upload to {repo_id} failed ({type(error).__name__}: {error}). {intact}")


def push_to_hub(
    checkpoint_dir: str | os.PathLike,
    repo_id: str,
    *,
    api=None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload student distilled with rrd_hf",
    commit_description: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    card=None,
    trust_remote_code: bool = False,
    **card_kwargs,
):
    """Publish the clean student of `checkpoint_dir` to `repo_id` in one commit; returns the `CommitInfo`.

    Stages and validates first (see `export_student`), then `api.create_repo(exist_ok=True)` and one
    `api.upload_folder`. `api` defaults to `huggingface_hub.HfApi()`; any object with those two methods works (tests
    pass a fake). `card_kwargs` go to `build_model_card` (teacher=, dataset=, license=, kind="teacher", ...).
    `trust_remote_code`: see `export_student` (only for architectures unknown to transformers and rrd_hf).
    Raises `HubPublishError` (with the reason and what to do) when the Hub call fails; local files are never touched.
    """
    folder = os.fspath(checkpoint_dir)
    card_kwargs.setdefault("repo_id", repo_id)
    with tempfile.TemporaryDirectory(prefix="rrd_hf_push_") as stage:
        files = export_student(folder, stage, card=card, trust_remote_code=trust_remote_code, **card_kwargs)
        api = api if api is not None else default_api()
        try:
            url = api.create_repo(repo_id, token=token, private=private, exist_ok=True, repo_type="model")
        except Exception as error:
            raise publish_error(error, repo_id, folder) from error
        final_id = getattr(url, "repo_id", None) or repo_id
        if final_id != repo_id and card is None:  # "name" became "user/name": the card's snippets must say so
            card_kwargs["repo_id"] = final_id
            build_model_card(folder, **card_kwargs).save(os.path.join(stage, "README.md"))
        logger.info("uploading %d files to %s: %s", len(files), final_id, ", ".join(files))
        try:
            return api.upload_folder(
                repo_id=final_id, folder_path=stage, commit_message=commit_message,
                commit_description=commit_description, token=token, repo_type="model", revision=revision,
                create_pr=create_pr,
            )
        except Exception as error:
            raise publish_error(error, final_id, folder) from error
