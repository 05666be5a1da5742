"""Bad input across every command: exit code 2, one line naming the problem, no traceback, and
no result file left behind."""

import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from study.cli import app
from tests.conftest import idx_bytes, write_idx_set

runner = CliRunner()
DIGITS = ["--dataset", "digits", "--epochs", "1"]


def _data_dir(tmp, problem):
    folder = tmp / "data"
    if problem == "empty":
        folder.mkdir()
        return folder
    write_idx_set(folder)
    images = folder / "train-images-idx3-ubyte"
    if problem == "truncated":
        images.write_bytes(images.read_bytes()[:-50])
    elif problem == "magic":
        images.write_bytes(b"\x00\x00\x0c\x03" + images.read_bytes()[4:])
    elif problem == "size":
        images.write_bytes(idx_bytes(np.zeros((40, 32, 32), np.uint8)))
    elif problem == "count":
        images.write_bytes(idx_bytes(np.zeros((41, 28, 28), np.uint8)))
    elif problem == "label":
        (folder / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.full(40, 10, np.uint8)))
    return folder


def _best(tmp, text):
    path = tmp / "study" / "tune" / "best.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return tmp / "study"


def _file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


SWEEP = 'kind = "sweep"\n[sweep]\nlr = [0.1]\n'
CASES = {
    # train: every numeric flag out of range, unknown names
    "train lr": (["train", *DIGITS, "--lr", "0"], "lr must be > 0"),
    "train batch": (["train", *DIGITS, "--batch-size", "0"], "batch_size must be >= 1"),
    "train epochs": (["train", "--dataset", "digits", "--epochs", "-2"], "epochs must be >= 1"),
    "train momentum": (["train", *DIGITS, "--momentum", "1.5"], "momentum must be in"),
    "train weight decay": (["train", *DIGITS, "--weight-decay", "-1"], "weight_decay must be >= 0"),
    "train val fraction": (["train", *DIGITS, "--val-fraction", "0.99"], "val_fraction must be in"),
    "train fraction": (["train", *DIGITS, "--train-fraction", "0"], "train_fraction must be in"),
    "train threads": (["train", *DIGITS, "--threads", "-1"], "threads must be >= 0"),
    "train seed": (["train", *DIGITS, "--seed", "-1"], "seed must be >= 0"),
    "unknown dataset": (["train", "--dataset", "cifar10"], "unknown dataset 'cifar10'"),
    "unknown model": (["train", *DIGITS, "--model", "vgg"], "unknown model 'vgg'"),
    "unknown optimizer": (["train", *DIGITS, "--optimizer", "lion"], "unknown optimizer 'lion'"),
    "unknown activation": (["train", *DIGITS, "--activation", "swish"], "unknown activation"),
    "unknown pooling": (["train", *DIGITS, "--pooling", "median"], "unknown pooling"),
    # data folders
    "missing data dir": (["train", "--dataset", "mnist", "--data-dir", "{tmp}/nowhere"], "does not exist"),
    "empty data dir": (["train", "--dataset", "mnist", "--data-dir", "{data:empty}"], "no mnist IDX files"),
    "truncated idx": (
        ["train", "--dataset", "mnist", "--data-dir", "{data:truncated}"],
        "truncated or corrupt",
    ),
    "wrong magic": (["train", "--dataset", "mnist", "--data-dir", "{data:magic}"], "bad magic number"),
    "wrong image size": (["train", "--dataset", "mnist", "--data-dir", "{data:size}"], "expected 28x28"),
    "count mismatch": (["train", "--dataset", "mnist", "--data-dir", "{data:count}"], "41 images but"),
    "label out of range": (
        ["train", "--dataset", "mnist", "--data-dir", "{data:label}"],
        "label 10 outside 0-9",
    ),
    # tune
    "tune trials": (["tune", *DIGITS, "--trials", "0"], "--trials must be >= 1"),
    "tune gpus per trial 0": (["tune", *DIGITS, "--gpus-per-trial", "0"], "--gpus-per-trial must be"),
    "tune gpus per trial 1.5": (["tune", *DIGITS, "--gpus-per-trial", "1.5"], "--gpus-per-trial must be"),
    "tune gpus": (["tune", *DIGITS, "--gpus", "-1"], "--gpus must be auto or a number >= 0"),
    "tune gpus word": (["tune", *DIGITS, "--gpus", "lots"], "--gpus must be auto or a number >= 0"),
    "tune no cuda": (["tune", *DIGITS, "--gpus", "2"], "CUDA sees 0 GPU"),
    "tune address": (["tune", *DIGITS, "--address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
    "tune address form": (["tune", *DIGITS, "--address", "nowhere"], "must look like HOST:PORT"),
    "tune port in use": (
        ["tune", *DIGITS, "--dashboard", "--dashboard-port", "{busy_port}"],
        "already in use",
    ),
    "tune port without dashboard": (
        ["tune", *DIGITS, "--no-dashboard", "--dashboard-port", "{busy_port}"],
        "--dashboard-port needs the dashboard",
    ),
    "tune space keys": (
        ["tune", *DIGITS, "--space", "{file:s.toml:[space]\nlr = { lo = 1 }\n}"],
        "unknown key 'lo'",
    ),
    "tune space reversed": (
        ["tune", *DIGITS, "--space", "{file:s.toml:[space]\nlr = { low = 1.0, high = 0.1 }\n}"],
        "range reversed",
    ),
    "tune space empty choices": (
        ["tune", *DIGITS, "--space", "{file:s.toml:[space]\noptimizer = { choices = [] }\n}"],
        "non-empty list",
    ),
    "tune space types": (
        ["tune", *DIGITS, "--space", '{file:s.toml:[space]\nlr = { low = "a", high = 1.0 }\n}'],
        "numeric",
    ),
    # ensemble
    "ensemble members 0": (["ensemble", *DIGITS, "--members", "0"], "members must be >= 2"),
    "ensemble members 1": (["ensemble", *DIGITS, "--members", "1"], "members must be >= 2"),
    "ensemble resnet": (["ensemble", *DIGITS, "--resnet", "resnet9"], "unknown --resnet"),
    "ensemble from without best": (["ensemble", "--from", "{tmp}"], "no best.json"),
    "ensemble best not json": (["ensemble", "--from", "{best:{oops}"], "not valid JSON"),
    "ensemble best no config": (["ensemble", "--from", '{best:{"metrics": {}}}'], "missing the 'config'"),
    "ensemble best bad field": (
        ["ensemble", "--from", '{best:{"config": {"epochs": "ten"}}}'],
        "epochs must be int",
    ),
    "ensemble resnet members": (["ensemble", *DIGITS, "--model", "resnet18"], "members are LeNet-5"),
    # packing (--pack K / --no-pack): ensemble and run
    "ensemble pack 0": (["ensemble", *DIGITS, "--pack", "0"], "--pack must be a whole number >= 1"),
    "ensemble pack word": (["ensemble", *DIGITS, "--pack", "many"], "--pack must be a whole number >= 1"),
    "ensemble pack fraction": (["ensemble", *DIGITS, "--pack", "2.5"], "--pack must be a whole number >= 1"),
    "ensemble pack and no-pack": (
        ["ensemble", *DIGITS, "--pack", "3", "--no-pack"],
        "give --pack K or --no-pack, not both",
    ),
    "run pack negative": (["run", "{file:e.toml:" + SWEEP + "}", "--pack", "-1"], "--pack must be a whole"),
    "tune seeds per trial": (["tune", *DIGITS, "--seeds-per-trial", "0"], "--seeds-per-trial must be"),
    "tune resume without name": (["tune", *DIGITS, "--resume"], "--resume needs the --name"),
    "tune all fixed": (
        [
            "tune",
            *DIGITS,
            "--optimizer",
            "adam",
            "--lr",
            "0.1",
            "--activation",
            "relu",
            "--pooling",
            "max",
            "--batch-size",
            "32",
            *("--lr-schedule", "constant", "--weight-decay", "0", "--label-smoothing", "0"),
            *("--augment", "none"),
        ],
        "nothing left to search",
    ),
    "train config missing": (["train", "--config", "{tmp}/best.json"], "does not exist"),
    "train config not json": (["train", "--config", "{file:best.json:{nope}"], "not valid JSON"),
    "train config unknown key": (
        ["train", "--config", '{file:best.json:{"config": {"learning_rate": 1}}}'],
        "unknown key 'learning_rate'",
    ),
    # run
    "run missing file": (["run", "{tmp}/nope.toml"], "does not exist"),
    "run not toml": (["run", "{file:e.toml:kind = }"], "not valid TOML"),
    "run unknown key": (["run", "{file:e.toml:" + SWEEP + "colour = 1\n}"], "unknown key 'colour'"),
    "run wrong type": (
        ["run", '{file:e.toml:kind = "sweep"\nseeds = "3"\n[sweep]\nlr = [0.1]\n}'],
        "seeds must be int",
    ),
    "run empty choices": (["run", '{file:e.toml:kind = "sweep"\n[sweep]\nlr = []\n}'], "non-empty list"),
    "run reversed range": (
        ["run", '{file:e.toml:kind = "tune"\n[space]\nlr = { low = 1.0, high = 0.1 }\n}'],
        "range reversed",
    ),
    "run bad value": (["run", '{file:e.toml:kind = "sweep"\n[sweep]\nlr = [-0.1]\n}'], "lr must be > 0"),
    # report
    "report missing": (["report", "{tmp}/none"], "is not a results folder"),
    "report empty": (["report", "{tmp}"], "holds no tune, ensemble, train or experiment"),
}


@pytest.fixture
def busy_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _expand(arg, tmp, port):
    if arg == "{tmp}":
        return str(tmp)
    if arg.startswith("{tmp}/"):
        return str(tmp / arg[6:])
    if arg == "{busy_port}":
        return str(port)
    if arg.startswith("{data:"):
        return str(_data_dir(tmp, arg[6:-1]))
    if arg.startswith("{best:"):
        return str(_best(tmp, arg[6:-1]))
    if arg.startswith("{file:"):
        name, text = arg[6:-1].split(":", 1)
        return str(_file(tmp, name, text))
    return arg


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(tmp_path, busy_port, case):
    args, message = CASES[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out = tmp_path / "out"
    command = [_expand(a, inputs, busy_port) for a in args]
    if command[0] != "report":
        command += ["--out", str(out)]
    before = {p for p in inputs.rglob("*")}
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
    assert {p for p in inputs.rglob("*")} == before  # inputs untouched, nothing added beside them


def test_every_command_that_takes_input_has_bad_input_cases():
    """A new command must come with its cases: the table is checked against the app itself."""
    commands = {(c.name or c.callback.__name__) for c in app.registered_commands}
    covered = {args[0] for args, _ in CASES.values()}
    takes_no_user_files = {"bench"}  # its bad flags are tested in test_bench.py
    assert commands - takes_no_user_files == covered
