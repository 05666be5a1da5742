"""`study bench`: the project against the usual way of doing the same work, as ratios.

Every speed figure is a ratio against a baseline measured in the same run, A/B alternated (ours
first in even rounds, the baseline first in odd ones), median over rounds: these machines are
noisy and shared, so absolute numbers do not carry over. Each section records the machine's load
average before and after it, and both sides of every A/B report the work they did (images,
optimizer steps), so a ratio is only ever read between runs that did the same thing.

Sections (``run_bench``), each in its module:

- ``train`` (train.py): whole-process ``study train`` for 1 epoch against
  ``scripts/reference_train.py`` (torchvision dataset + DataLoader, the tutorial loop), both as
  subprocesses, with where each one's time goes;
- ``precision`` (precision.py): bf16 autocast against fp32 on the CPU, ResNet-18 and LeNet-5;
- ``loop`` (train.py): lenet_core's training loop against the DataLoader loop, per batch size;
- ``study`` (tune.py, opt-in): ``study tune`` against ``scripts/peer_tune.py`` (Ray Tune + Optuna
  written as Ray's docs write it), both as subprocesses, and Tune's overhead in process;
- ``ensemble`` (ensemble.py, opt-in): ``study ensemble`` with its ResNet-18 in bf16 against fp32;
- ``accuracy`` (precision.py, opt-in): ResNet-18 test accuracy in bf16 against fp32 over seeds;
- ``pack`` (pack.py, opt-in): K LeNet-5s trained as one pack (lenet_core.packed) against one
  after another, K = 1..16, training images/s.
"""

from study.bench.report import print_report, report_tables
from study.bench.run import bench_command, run_bench
from study.bench.settings import BenchSettings

__all__ = ["BenchSettings", "bench_command", "print_report", "report_tables", "run_bench"]
