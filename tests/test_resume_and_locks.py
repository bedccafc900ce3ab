"""What users run when things go wrong around a run's folder, run the way they run it (`rrd-hf train` through
`rrd_hf.commands.cli.main`, and `python -m rrd_hf.train`, the `accelerate launch` path, in a subprocess): resuming a
finished run, two runs into one folder, a killed run, a resume with other settings, an overwritten run that is
killed, a full disk at the final save, and checkpoints damaged in the ways that happen (a changed file, a pickle
naming code, a half-deleted folder). Every refusal is one message naming what to do, never a traceback."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import TinyImageDataset, tiny_model
from rrd_hf import RRDConfig, RRDTrainer
from rrd_hf.commands.train import main as train_main
from rrd_hf.training.checkpoints import (COMPLETE_MARKER, DISTILL_STATE_NAME, LOCK_NAME, is_complete,
                                         list_checkpoints, mark_complete, rotate_checkpoints)
from test_reliability import ENV, assert_bitwise_equal, cifar10_folder, recipe, teacher_folder, weights  # noqa: F401

LAUNCHERS = ["cli", "module"]


# ------------------------------------------------------------------------------------------------ helpers
def launch(launcher: str, argv: list[str], capsys=None, timeout=600) -> tuple[int, str]:
    """Run `rrd-hf train ARGV` in this process ("cli") or `python -m rrd_hf.train ARGV` in a subprocess ("module");
    (exit status, stderr). In this process the log goes to pytest's log capture, not to stderr."""
    if launcher == "module":
        result = subprocess.run([sys.executable, "-m", "rrd_hf.train", *map(str, argv)], env=ENV, capture_output=True,
                                text=True, timeout=timeout)
        return result.returncode, result.stderr
    from rrd_hf.commands.cli import main

    capsys.readouterr()
    try:
        main(["train", *map(str, argv)])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def error_line(launcher: str, stderr: str) -> str:
    """The one error message of a refused command (and no traceback)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    prefix = "rrd-hf train: error: " if launcher == "cli" else "python -m rrd_hf.train: error: "
    lines = [line for line in stderr.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0][len(prefix):]


def logged(launcher: str, stderr: str, caplog) -> str:
    return stderr if launcher == "module" else caplog.text


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def corrupt_header(path: Path) -> None:
    """Damage a safetensors header in place, keeping the size (the checkpoint's marker still calls it complete)."""
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32
    path.write_bytes(bytes(data))


class _Payload:
    """What a hostile checkpoint file holds: a pickle that runs a command when it is unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, cifar10_folder, teacher_folder):  # noqa: F811
    """A run of 4 steps (6 per epoch: it ends mid-epoch) with checkpoint-2 and checkpoint-4, and its recipe."""
    root = tmp_path_factory.mktemp("finished")
    path = recipe(root, cifar10_folder, teacher_folder, max_steps=4, save_steps=2)
    train_main([str(path), "--output_dir", str(root / "run")])
    return root / "run", path


@pytest.fixture(scope="module")
def run_without_checkpoints(tmp_path_factory, cifar10_folder, teacher_folder):  # noqa: F811
    root = tmp_path_factory.mktemp("no_checkpoints")
    path = recipe(root, cifar10_folder, teacher_folder, max_steps=2, save_strategy="no")
    train_main([str(path), "--output_dir", str(root / "run")])
    return root / "run", path


def copy_of(run, tmp_path) -> tuple[Path, Path]:
    folder, path = run
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run", path


# ------------------------------------------------------------------------------------------------ 5: a finished run
def test_resuming_a_finished_run_trains_nothing_and_rewrites_nothing(tmp_path, finished_run, capsys, caplog):
    out, path = copy_of(finished_run, tmp_path)
    before = snapshot(out)
    code, err = launch("cli", [path, "--output_dir", out, "--resume_from_checkpoint", "latest"], capsys)
    assert code == 0, err[-3000:]
    assert snapshot(out) == before  # byte for byte, and not even rewritten with the same bytes
    assert f"{out} holds the finished run (step 4): nothing to train, nothing rewritten." in caplog.text
    assert json.loads((out / "results.json").read_text())["global_step"] == 4


def test_a_kill_during_the_final_save_is_completed_without_an_extra_step(tmp_path, finished_run):
    out, path = copy_of(finished_run, tmp_path)
    final = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(final[: len(final) // 2])  # what a kill in the middle of the save left
    (out / "results.json").unlink()
    code, err = launch("module", [path, "--output_dir", out, "--resume_from_checkpoint", "latest"])
    assert code == 0, err[-3000:]
    assert "checkpoint-4 is at step 4 and max_steps is 4: the run is finished, nothing to train" in err
    assert json.loads((out / "results.json").read_text())["global_step"] == 4
    assert_bitwise_equal(weights(out), load_file(finished_run[0] / "model.safetensors"), "the finished model")
    assert not (out / "checkpoint-5").exists()


# ------------------------------------------------------------------------------------------------ 6: one run per folder
def test_two_runs_started_at_once_into_one_folder_one_is_refused(tmp_path, cifar10_folder, teacher_folder):  # noqa: F811
    path = recipe(tmp_path, cifar10_folder, teacher_folder, max_steps=8, save_steps=2)
    out = tmp_path / "run"
    processes = [subprocess.Popen([sys.executable, "-m", "rrd_hf.commands.cli", "train", str(path), "--output_dir",
                                   str(out), "--seed", str(seed)], env=ENV, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for seed in (7, 8)]
    errs = [process.communicate(timeout=600)[1] for process in processes]
    codes = [process.returncode for process in processes]
    assert sorted(codes) == [0, 1], [err[-2000:] for err in errs]
    loser = codes.index(1)
    message = error_line("cli", errs[loser])
    assert message.startswith(f"{out} is in use by another run (pid {processes[1 - loser].pid} on ")
    assert "Wait for that run to end, or choose another output_dir." in message
    seed = (7, 8)[1 - loser]
    assert json.loads((out / "results.json").read_text())["seed"] == seed
    for _, checkpoint in list_checkpoints(str(out)):  # no checkpoint of the refused run
        assert json.loads((Path(checkpoint) / "training_args.json").read_text())["seed"] == seed
    assert not (out / LOCK_NAME).exists()  # the winner removed its lock file when it ended


def test_a_killed_run_holds_no_lock(tmp_path, cifar10_folder, teacher_folder, capsys):  # noqa: F811
    path = recipe(tmp_path, cifar10_folder, teacher_folder, max_steps=40, save_steps=2)
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-m", "rrd_hf.train", str(path), "--output_dir", str(out)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint-2" / COMPLETE_MARKER).exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.05)
        code, err = launch("cli", [path, "--output_dir", out, "--resume_from_checkpoint", "latest"], capsys)
        assert code == 1
        assert error_line("cli", err).startswith(f"{out} is in use by another run (pid {holder.pid} on ")
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    assert (out / LOCK_NAME).exists()  # left behind by the killed run, but nothing holds it
    code, err = launch("cli", [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "4"],
                       capsys)
    assert code == 0, err[-3000:]
    assert json.loads((out / "results.json").read_text())["global_step"] == 4
    assert not (out / LOCK_NAME).exists()


# ------------------------------------------------------------------------------------------------ 8: resume settings
@pytest.mark.parametrize("flags,expected", [
    (["--seed", "8"], "seed 7 -> 8"),
    (["--learning_rate", "0.1"], "learning_rate 0.05 -> 0.1"),
    (["--dataset", "{data_copy}"], "dataset \"{data}\" -> \"{data_copy}\""),
    (["--dataset", "cifar10", "--data_dir", "{data}"], "data_dir null -> \"{data}\""),
    (["--max_train_samples", "40"], "max_train_samples null -> 40"),
    (["--teacher_model_name_or_path", "{teacher_copy}"], "teacher_model_name_or_path \"{teacher}\" -> \"{teacher_copy}\""),
])
def test_resuming_with_other_settings_is_refused_naming_them(tmp_path, finished_run, cifar10_folder,  # noqa: F811
                                                           teacher_folder, capsys, flags, expected):  # noqa: F811
    out, path = copy_of(finished_run, tmp_path)
    names = {"data": os.path.realpath(cifar10_folder), "teacher": os.path.realpath(teacher_folder),
             "data_copy": str(tmp_path / "data_copy"), "teacher_copy": str(tmp_path / "teacher_copy")}
    shutil.copytree(cifar10_folder, names["data_copy"])
    shutil.copytree(teacher_folder, names["teacher_copy"])
    before = snapshot(out)
    code, err = launch("cli", [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6",
                               *[flag.format(**names) for flag in flags]], capsys)
    assert code == 1, err[-3000:]
    message = error_line("cli", err)
    assert message.startswith(f"{out}/checkpoint-4 was trained with other settings: "), message
    assert expected.format(**names) in message
    assert "record only the new values" in message
    assert snapshot(out) == before


def test_a_resume_may_change_what_it_is_allowed_to_and_the_results_say_so(tmp_path, finished_run, capsys):
    out, path = copy_of(finished_run, tmp_path)
    resume = [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"]
    code, err = launch("module", [*resume, "--seed", "8"])
    assert code == 1
    message = error_line("module", err)
    assert "seed 7 -> 8" in message and "(seed cannot change on resume: they define the run)" in message
    code, err = launch("cli", [*resume, "--seed", "8", "--allow_resume_changes", "seed"], capsys)
    assert code == 1 and "seed cannot change on resume" in error_line("cli", err)
    code, err = launch("cli", [*resume, "--learning_rate", "0.1"], capsys)
    assert "--allow_resume_changes learning_rate" in error_line("cli", err)
    code, err = launch("cli", [*resume, "--learning_rate", "0.1", "--allow_resume_changes", "learning_rate"], capsys)
    assert code == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["global_step"] == 6
    assert results["resume_changes"] == {"learning_rate": {"before": 0.05, "after": 0.1}}


# ------------------------------------------------------------------------------------------------ 11: overwriting
def test_an_overwriting_run_killed_early_leaves_no_old_model_in_its_folder(tmp_path, finished_run):
    out, path = copy_of(finished_run, tmp_path)
    old_model = (out / "model.safetensors").read_bytes()
    log = tmp_path / "log.txt"
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "rrd_hf.train", str(path), "--output_dir", str(out),
                                    "--overwrite_output_dir", "--seed", "9", "--max_steps", "40"], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=handle, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while not ((out / "checkpoint-2" / COMPLETE_MARKER).exists()
                       and json.loads((out / "checkpoint-2" / "training_args.json").read_text())["seed"] == 9):
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    replaced = list(out.glob(".replaced-*"))
    assert len(replaced) == 1
    assert f"was moved into {replaced[0]}" in log.read_text()
    assert not (out / "model.safetensors").exists() and not (out / "results.json").exists()
    assert not (out / "checkpoint-4").exists()  # the old run's last checkpoint went with it
    assert (replaced[0] / "model.safetensors").read_bytes() == old_model
    assert (replaced[0] / "checkpoint-4" / COMPLETE_MARKER).exists()
    from rrd_hf.hub import export_student
    from rrd_hf.hub.errors import ExportError

    with pytest.raises((ExportError, FileNotFoundError), match="no model.safetensors|no readable config.json"):
        export_student(out, tmp_path / "export")  # what `rrd-hf push` publishes: nothing of the old run


# ------------------------------------------------------------------------------------------------ 12: a full disk
def _full_disk(monkeypatch):
    import transformers.modeling_utils

    def write_then_fail(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", write_then_fail)


def test_a_full_disk_at_the_final_save_leaves_no_partial_model_and_says_what_to_free(
        tmp_path, cifar10_folder, teacher_folder, monkeypatch, capsys):  # noqa: F811
    path = recipe(tmp_path, cifar10_folder, teacher_folder, max_steps=2, save_strategy="no")
    out = tmp_path / "run"
    _full_disk(monkeypatch)
    code, err = launch("cli", [path, "--output_dir", out], capsys)
    assert code == 1
    message = error_line("cli", err)
    assert message.startswith(f"could not write the final model into {out} (No space left on device): the command "
                              "failed before writing the model or results.json. Free at least "), message
    assert "run the command again: no checkpoint holds step 2" in message
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []  # a folder the run left empty is removed
    assert "model.safetensors" not in left and "results.json" not in left
    assert not [name for name in left if name.startswith(".saving-")]


def test_a_full_disk_at_save_model_keeps_the_model_in_memory_for_another_try(tmp_path, monkeypatch):
    args = RRDConfig(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=8, memory_size=16,
                     save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True)
    trainer = RRDTrainer(model=tiny_model(seed=1), teacher_model=tiny_model(width=16, seed=2), args=args,
                         train_dataset=TinyImageDataset(16, with_index=True))
    trainer.train()
    with monkeypatch.context() as patch:
        _full_disk(patch)
        with pytest.raises(OSError, match=r"\(No space left on device\): nothing was written there\. Free at least "
                                          r"\d+ MB on that disk.* call save_model\(\) again: the trained model is "
                                          r"still in memory\.$"):
            trainer.save_model()
    assert not (tmp_path / "run" / "model.safetensors").exists()
    trainer.save_model()
    assert_bitwise_equal(weights(tmp_path / "run"), {k: v.contiguous() for k, v in trainer.model.state_dict().items()},
                         "saved after the failure")


# ------------------------------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_corrupt_checkpoint_model_is_named_with_the_checkpoint_to_use(tmp_path, finished_run, capsys, launcher):
    out, path = copy_of(finished_run, tmp_path)
    corrupt_header(out / "checkpoint-4" / "model.safetensors")
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"],
                       capsys)
    assert code == 1
    message = error_line(launcher, err)
    assert message.startswith(f"{out}/checkpoint-4/model.safetensors cannot be loaded ("), message
    assert f"Resume from another checkpoint: --resume_from_checkpoint {out}/checkpoint-2 " in message


@pytest.mark.parametrize("name,launcher", [("optimizer.pt", "cli"), ("optimizer.pt", "module"),
                                           ("rng_state.pth", "cli"), ("scheduler.pt", "cli")])
def test_a_pickle_naming_code_in_a_checkpoint_is_not_loaded(tmp_path, finished_run, capsys, name, launcher):
    out, path = copy_of(finished_run, tmp_path)
    checkpoint = out / "checkpoint-4"
    ran = tmp_path / "the_payload_ran"
    torch.save({"state": _Payload(ran)}, checkpoint / name)
    mark_complete(str(checkpoint), 4)  # a folder received from elsewhere, consistent with its marker
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"],
                       capsys)
    assert code == 1
    message = error_line(launcher, err)
    assert message.startswith(f"{checkpoint}/{name} is not a plain tensor file: it is a pickle that refers to code"), message
    assert "not trusted and was not loaded" in message
    assert f"--resume_from_checkpoint {out}/checkpoint-2" in message
    assert "weights_only=False" not in err
    assert not ran.exists()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_garbage_trainer_state_is_named(tmp_path, finished_run, capsys, launcher):
    out, path = copy_of(finished_run, tmp_path)
    state = out / "checkpoint-4" / "trainer_state.json"
    state.write_bytes(b"#" * state.stat().st_size)  # same size: the marker does not see it
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"],
                       capsys)
    assert code == 1
    message = error_line(launcher, err)
    assert message.startswith(f"{state} cannot be read ("), message
    assert f"--resume_from_checkpoint {out}/checkpoint-2" in message


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_checkpoint_half_deleted_by_rotation_counts_as_incomplete(tmp_path, finished_run, capsys, caplog, launcher):
    out, path = copy_of(finished_run, tmp_path)
    checkpoint = out / "checkpoint-4"
    for name in (COMPLETE_MARKER, "optimizer.pt", "rng_state.pth"):  # what an interrupted rmtree left
        (checkpoint / name).unlink()
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", checkpoint], capsys)
    assert code == 1
    assert f"{checkpoint} is not a complete checkpoint (it has no {COMPLETE_MARKER} and lacks optimizer.pt, " \
           "rng_state.pth" in error_line(launcher, err)
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"],
                       capsys)
    assert code == 0, err[-3000:]
    log = logged(launcher, err, caplog)
    assert f"skipped incomplete checkpoints: {checkpoint} (it has no {COMPLETE_MARKER} and lacks" in log
    assert f"resuming from {out}/checkpoint-2." in log
    assert json.loads((out / "results.json").read_text())["global_step"] == 6


def test_rotation_never_leaves_a_half_deleted_checkpoint(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
            (folder / name).write_text("{}")
        mark_complete(str(folder), step)
    import rrd_hf.training.checkpoints as checkpoints

    def killed_midway(path, ignore_errors=False):
        os.remove(os.path.join(path, COMPLETE_MARKER))
        raise KeyboardInterrupt  # the process stops here, the folder half-deleted

    monkeypatch.setattr(checkpoints.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        rotate_checkpoints(str(tmp_path), limit=2)
    assert [Path(path).name for _, path in list_checkpoints(str(tmp_path))] == ["checkpoint-2", "checkpoint-3"]
    monkeypatch.undo()
    rotate_checkpoints(str(tmp_path), limit=2)  # the next rotation removes what the interrupted one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_a_checkpoint_without_a_marker_is_complete_only_when_whole(tmp_path):
    """Checkpoints written before markers existed (or by a plain Trainer) still resume; the same folder missing a file
    a resume reads is what an interrupted rotation leaves."""
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "config.json"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text('{"global_step": 3}')
    assert is_complete(str(folder))
    (folder / "scheduler.pt").unlink()
    assert not is_complete(str(folder))


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_corrupt_distill_state_sends_the_user_to_an_older_checkpoint(tmp_path, finished_run, capsys, launcher):
    out, path = copy_of(finished_run, tmp_path)
    corrupt_header(out / "checkpoint-4" / DISTILL_STATE_NAME)
    code, err = launch(launcher, [path, "--output_dir", out, "--resume_from_checkpoint", "latest", "--max_steps", "6"],
                       capsys)
    assert code == 1
    message = error_line(launcher, err)
    assert message.startswith(f"{out}/checkpoint-4/{DISTILL_STATE_NAME} cannot be loaded ("), message
    assert "skips incomplete ones" not in message  # 'latest' chose this checkpoint: it cannot be the way out
    assert f"--resume_from_checkpoint {out}/checkpoint-2" in message


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_truncated_final_model_without_checkpoints_gets_one_way_out(tmp_path, run_without_checkpoints, capsys,
                                                                       launcher):
    out, path = copy_of(run_without_checkpoints, tmp_path)
    model = out / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    for extra in ([], ["--resume_from_checkpoint", "latest"]):
        code, err = launch(launcher, [path, "--output_dir", out, *extra], capsys)
        assert code == 1
        message = error_line(launcher, err)
        assert message.startswith(f"{out} holds a model.safetensors that cannot be loaded (truncated"), message
        assert "no complete checkpoint" in message and "--overwrite_output_dir" in message
        assert "--resume_from_checkpoint latest" not in message  # the other command would send the user back here


def test_python_m_rrd_hf_train_reports_the_errors_rrd_hf_train_reports():
    from rrd_hf.commands import cli, train

    assert set(train.user_errors()) == set(cli.USER_ERRORS)
