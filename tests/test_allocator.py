import subprocess
import sys

import pytest

import lenet_core.allocator as allocator
from lenet_core.config import TrialConfig

# A fresh interpreter (the setting is process-wide): minor page faults per LeNet-5 training step,
# batch 64, once the first steps have sized every buffer. argv[1] == "keep" sets the allocator.
FAULTS_PER_STEP = """
import resource, sys
import torch
import torch.nn.functional as F
from lenet_core.allocator import keep_freed_memory
from lenet_core.config import TrialConfig
from lenet_core.train import MEMORY_FORMAT, build_trial_model, make_optimizer

kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
config = TrialConfig(dataset="digits")
model = build_trial_model(config)
optimizer = make_optimizer(config, model.parameters())
x = torch.randn(64, 1, 28, 28).contiguous(memory_format=MEMORY_FORMAT)
y = torch.randint(0, 10, (64,))

def step():
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()

for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    step()
print(kept, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 40)
"""


def faults_per_step(mode: str) -> tuple[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True, timeout=120, check=True
    )
    kept, faults = done.stdout.split()
    return kept, float(faults)


@pytest.mark.skipif(allocator.glibc_version() is None, reason="mallopt is glibc's")
def test_training_steps_stop_faulting_pages_once_freed_memory_is_kept():
    kept, kept_faults = faults_per_step("keep")
    _, default_faults = faults_per_step("default")
    assert kept == "True"
    # LeNet-5's conv1 maps alone are 1.2 MB (about 290 pages) a step. Reused memory faults none;
    # a handful come from elsewhere (measured: 0 alone, up to 7 under pytest-xdist; 500-1,000 without).
    assert kept_faults < 30, f"{kept_faults} page faults a step with the settings, {default_faults} without"


def test_glibc_version_is_read_from_confstr(monkeypatch):
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "glibc 2.36", raising=False)
    assert allocator.glibc_version() == "2.36"
    monkeypatch.setattr(allocator.os, "confstr", lambda name: "musl 1.2", raising=False)
    assert allocator.glibc_version() is None


def test_other_c_libraries_are_left_alone(monkeypatch):
    def no_such_name(name):
        raise ValueError("unrecognized configuration name")

    monkeypatch.setattr(allocator.os, "confstr", no_such_name, raising=False)
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda *a: pytest.fail("mallopt called off glibc"))
    assert allocator.keep_freed_memory() is False


def test_the_study_command_keeps_freed_memory_before_any_command_runs(monkeypatch):
    import study.cli as cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("allocator"))
    monkeypatch.setattr(cli, "app", lambda: calls.append("command"))
    cli.main()
    assert calls == ["allocator", "command"]


def test_a_ray_worker_keeps_freed_memory_when_placed(monkeypatch):
    import study.common.placement as placement

    calls = []
    granted = placement.Placement(cpus=2.0, gpu_ids=(), node_ip="127.0.0.1", node_id="n")
    monkeypatch.setattr(placement, "keep_freed_memory", lambda: calls.append("allocator"))
    monkeypatch.setattr(placement, "current_placement", lambda: granted)
    config, where = placement.place(TrialConfig(dataset="digits", threads=0))
    assert calls == ["allocator"]
    assert (config.threads, where) == (2, granted)
