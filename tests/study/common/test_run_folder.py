"""Every command refuses a result folder that holds results unless given --resume or --overwrite,
and a lock makes a second concurrent run of the same name exit 2 with one line."""

import fcntl
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lenet_core.errors import StudyError
from study.cli import app
from study.common.files import LOCK_FILE, run_folder

runner = CliRunner()
COMMANDS = {
    "train": (["train", "--dataset", "digits", "--epochs", "1"], "train"),
    "tune": (["tune", "--dataset", "digits", "--trials", "1", "--epochs", "1"], "tune"),
    "ensemble": (
        ["ensemble", "--dataset", "digits", "--members", "2", "--epochs", "1", "--resnet", "none"],
        "ensemble",
    ),
    "run": (["run", "experiments/optimizers.toml", "--smoke", "--dataset", "digits"], "."),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_existing_results_are_refused_without_resume_or_overwrite(tmp_path, command):
    args, stage = COMMANDS[command]
    folder = tmp_path / "x" / stage
    folder.mkdir(parents=True)
    (folder / "earlier.csv").write_text("kept")
    result = runner.invoke(app, [*args, "--out", str(tmp_path), "--name", "x"])
    assert result.exit_code == 2, result.output
    assert "already holds results" in result.stderr and result.stderr.count("\n") == 1
    assert (folder / "earlier.csv").read_text() == "kept"
    assert sorted(p.name for p in folder.iterdir()) == ["earlier.csv"]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_second_run_of_the_same_name_is_locked_out(tmp_path, command):
    args, stage = COMMANDS[command]
    folder = tmp_path / "x" / stage
    folder.mkdir(parents=True)
    with (folder / LOCK_FILE).open("w") as held:  # as a running study holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = runner.invoke(app, [*args, "--out", str(tmp_path), "--name", "x"])
    assert result.exit_code == 2, result.output
    assert "another run is writing" in result.stderr and result.stderr.count("\n") == 1


def test_the_lock_is_held_across_processes(tmp_path):
    """flock is per open file: a lock held by another process blocks this one."""
    folder = tmp_path / "x" / "train"
    folder.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); "
                "print('held', flush=True); time.sleep(60)"
            ),
            str(folder / LOCK_FILE),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StudyError, match="another run is writing"), run_folder(tmp_path, "x", "train"):
            pass
    finally:
        holder.kill()  # our own child
        holder.wait()
    with run_folder(tmp_path, "x", "train") as got:  # free again once the holder is gone
        assert got == folder


def test_overwrite_replaces_and_resume_keeps(tmp_path):
    folder = tmp_path / "x" / "train"
    folder.mkdir(parents=True)
    (folder / "old.csv").write_text("old")
    with run_folder(tmp_path, "x", "train", resume=True):
        assert (folder / "old.csv").exists()
    with run_folder(tmp_path, "x", "train", overwrite=True):
        assert not (folder / "old.csv").exists()
    with (
        pytest.raises(StudyError, match="not both"),
        run_folder(tmp_path, "x", "train", resume=True, overwrite=True),
    ):
        pass


def test_a_failed_start_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError), run_folder(tmp_path / "out", "x", "tune"):
        raise RuntimeError("Ray did not start")
    assert not (tmp_path / "out").exists()


def test_train_overwrite_flag_replaces_results(tmp_path):
    args = [
        "train",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--out",
        str(tmp_path),
        "--name",
        "t",
    ]
    assert runner.invoke(app, args).exit_code == 0
    assert runner.invoke(app, args).exit_code == 2
    again = runner.invoke(app, [*args, "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "t" / "train" / "result.json").is_file()
