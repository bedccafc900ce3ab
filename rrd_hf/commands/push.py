"""`rrd-hf push`: parse the command line and call the library (nothing else lives here)."""

from __future__ import annotations

import argparse
import json

from ..hub.card import TEMPLATE_NAMES
from ..hub.export import export_student
from ..hub.upload import push_to_hub


def push_command(argv: list[str]) -> None:
    """`rrd-hf push CHECKPOINT REPO_ID [...]`."""
    parser = argparse.ArgumentParser(
        prog="rrd-hf push",
        description="Publish the clean student of a run folder (weights, config, model code, processor, card, figures) "
        "in one commit. The teacher, RRD heads/memory, optimizer, training_args.bin and checkpoint-* never go up, "
        "and no code from the folder runs unless --trust-remote-code is given.",
    )
    parser.add_argument("checkpoint", help="run output_dir or save_pretrained folder")
    parser.add_argument("repo_id", help="namespace/name of the model repo (created if missing)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--teacher", default=None, help="Hub id of the teacher (default: what the run recorded)")
    parser.add_argument("--dataset", default=None, help="training dataset: known name or Hub id (default: recorded)")
    parser.add_argument("--eval-split", default=None, help="split the accuracies were measured on (default: what the run recorded)")
    parser.add_argument("--kind", choices=sorted(TEMPLATE_NAMES), default="student", help="card template (default student)")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--tag", action="append", default=None, help="extra card tag (repeatable)")
    parser.add_argument("--report", choices=["auto", "best", "last"], default="auto",
                        help="which evaluation goes into the model-index (default: the one of the published weights)")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one / HF_TOKEN)")
    parser.add_argument("--revision", default=None, help="branch to commit to")
    parser.add_argument("--commit-message", default="Upload student distilled with rrd_hf")
    parser.add_argument("--export-dir", default=None, help="only write the validated clean folder here (no upload)")
    parser.add_argument("--training-args", default=None, metavar="FILE.json",
                        help="training arguments for the card (default: the run's training_args.json; "
                        "training_args.bin is never unpickled)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="let validation import the folder's own .py files; needed only for an architecture that "
                        "neither transformers nor rrd_hf knows (read the files first)")
    args = parser.parse_args(argv)
    card_kwargs = dict(repo_id=args.repo_id, teacher=args.teacher, dataset=args.dataset, eval_split=args.eval_split,
                       kind=args.kind, license=args.license, tags=args.tag, report=args.report,
                       training_args=args.training_args, trust_remote_code=args.trust_remote_code)
    if args.export_dir:
        files = export_student(args.checkpoint, args.export_dir, **card_kwargs)
        print(json.dumps({"export_dir": args.export_dir, "files": files}, indent=2))
        return
    card_kwargs.pop("repo_id")
    info = push_to_hub(args.checkpoint, args.repo_id, private=args.private, token=args.token, revision=args.revision,
                       commit_message=args.commit_message, **card_kwargs)
    print(json.dumps({"repo_id": args.repo_id, "commit_url": str(getattr(info, "commit_url", info))}, indent=2))
