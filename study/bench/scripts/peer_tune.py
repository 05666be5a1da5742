"""A Ray Tune + Optuna study of LeNet-5 written the way Ray's docs write their MNIST example.

Each trial builds its own torchvision datasets and DataLoaders (under a FileLock, as the docs
do), trains with Adam, reports validation accuracy after every epoch with ``tune.report`` and
tests after the last one. OptunaSearch proposes lr, activation and pooling; no scheduler stops
trials early. It is what `study tune --trials N --epochs E --batch-size B --optimizer adam
--scheduler none` does with a space of lr, activation and pooling.

Standalone on purpose: it imports nothing from this project. Ray listens on 127.0.0.1 only. The
last line it prints is JSON: trials, epochs, images and optimizer steps of all trials, the best
trial, and where the time went.

    python peer_tune.py --root DIR --out DIR [--trials 8] [--epochs 2] [--batch-size 64]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

# Ray would otherwise take this machine's interface address and listen on every interface.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from filelock import FileLock  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, Subset, random_split  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

IMPORTED = time.perf_counter()

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels, the usual constants
TEST_BATCH_SIZE = 1000
VAL_FRACTION = 0.1


class LeNet5(nn.Module):
    def __init__(self, activation: str = "relu", pooling: str = "max") -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
        pool = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}[pooling]
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), act(), pool(2), nn.Conv2d(6, 16, 5), act(), pool(2)
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(400, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def get_data_loaders(
    root: str, batch_size: int, seed: int, train_images: int | None
) -> tuple[DataLoader, DataLoader, DataLoader]:
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    with FileLock(os.path.join(root, "data.lock")):
        full = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
        test_set = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    n_val = int(len(full) * VAL_FRACTION)
    train_set, val_set = random_split(
        full, [len(full) - n_val, n_val], generator=torch.Generator().manual_seed(seed)
    )
    if train_images is not None:  # a smaller study: the first images of the shuffled split
        train_set = Subset(train_set, range(train_images))
    return (
        DataLoader(train_set, batch_size=batch_size, shuffle=True),
        DataLoader(val_set, batch_size=TEST_BATCH_SIZE),
        DataLoader(test_set, batch_size=TEST_BATCH_SIZE),
    )


def train_func(model, optimizer, loader) -> tuple[int, int]:
    model.train()
    images = steps = 0
    for data, target in loader:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(data), target)
        loss.backward()
        optimizer.step()
        images += len(target)
        steps += 1
    return images, steps


def test_func(model, loader) -> tuple[int, float]:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data, target in loader:
            correct += (model(data).argmax(dim=1) == target).sum().item()
            total += len(target)
    return total, correct / max(total, 1)


def train_fashion(
    config: dict, *, root: str, epochs: int, batch_size: int, seed: int, train_images: int | None
) -> None:
    started = time.time()
    torch.manual_seed(seed)
    train_loader, val_loader, test_loader = get_data_loaders(root, batch_size, seed, train_images)
    model = LeNet5(activation=config["activation"], pooling=config["pooling"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    first_step = time.time()
    images = steps = val_images = test_images = 0
    for epoch in range(1, epochs + 1):
        epoch_images, epoch_steps = train_func(model, optimizer, train_loader)
        seen, val_acc = test_func(model, val_loader)
        images, steps, val_images = images + epoch_images, steps + epoch_steps, val_images + seen
        test_acc = float("nan")
        if epoch == epochs:
            test_images, test_acc = test_func(model, test_loader)
        tune.report(
            {
                "val_acc": val_acc,
                "test_acc": test_acc,
                "train_images": images,
                "steps": steps,
                "val_images": val_images,
                "test_images": test_images,
                "started_at": started,
                "first_step_at": first_step,
            }
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="torchvision root holding FashionMNIST/raw")
    parser.add_argument("--out", required=True, help="Tune's storage path")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-images", type=int, default=None, help="train on this many only")
    parser.add_argument("--dashboard-port", type=int, default=8265)
    args = parser.parse_args()

    # address="local": its own Ray, as on a fresh machine, never another cluster running here
    ray.init(
        address="local",
        _node_ip_address="127.0.0.1",
        dashboard_host="127.0.0.1",
        dashboard_port=args.dashboard_port,
    )
    ray_up = time.perf_counter()
    search_space = {
        "lr": tune.loguniform(1e-4, 1e-2),
        "activation": tune.choice(["relu", "tanh", "sigmoid"]),
        "pooling": tune.choice(["max", "avg"]),
    }
    trainable = partial(
        train_fashion,
        root=str(Path(args.root).resolve()),
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        train_images=args.train_images,
    )
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            metric="val_acc",
            mode="max",
            search_alg=OptunaSearch(seed=args.seed),
            num_samples=args.trials,
        ),
        run_config=tune.RunConfig(name="peer", storage_path=str(Path(args.out).resolve())),
        param_space=search_space,
    )
    fit_start = time.time()
    results = tuner.fit()
    fit_end = time.time()
    fitted = time.perf_counter()
    best = results.get_best_result()
    print(f"best config {best.config}: validation accuracy {best.metrics['val_acc']:.4f}", flush=True)
    frame = results.get_dataframe()
    ray.shutdown()
    finished = time.perf_counter()
    report = {
        "trials": len(results),
        "errors": len(results.errors),
        "epochs": int(frame["training_iteration"].sum()),
        "train_images": int(frame["train_images"].sum()),
        "steps": int(frame["steps"].sum()),
        "val_images": int(frame["val_images"].sum()),
        "test_images": int(frame["test_images"].sum()),
        "best_val_acc": float(best.metrics["val_acc"]),
        "best_test_acc": float(best.metrics["test_acc"]),
        "best_config": best.config,
        "seconds": {
            "imports": IMPORTED - STARTED,
            "ray_start": ray_up - IMPORTED,
            "fit": fitted - ray_up,
            "first_trial_start_after_fit": float(frame["started_at"].min() - fit_start),
            "first_step_after_fit": float(frame["first_step_at"].min() - fit_start),
            "last_report_to_fit_end": float(fit_end - frame["timestamp"].max()),
            "after_fit": finished - fitted,
            "in_script": finished - STARTED,
        },
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
