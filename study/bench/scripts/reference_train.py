"""One LeNet-5 training run written the usual way: torchvision dataset, DataLoader, tutorial loop.

What `study train --epochs E --batch-size B --threads T` does, done as the PyTorch MNIST example
does it: ``torchvision.datasets.FashionMNIST`` with ToTensor + Normalize, a 90/10 train/validation
``random_split``, a shuffled DataLoader (no workers), Adam, validation after every epoch, one test
pass at the end (loaders of 1,000 images, as the example's test loader), and the weights saved.

Standalone on purpose: it imports nothing from this project. The last line it prints is JSON: how
much work it did (images, optimizer steps), its accuracies and where its time went.

    python reference_train.py --root DIR [--epochs 1] [--batch-size 64] [--threads 1] [--out DIR]
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, random_split  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

IMPORTED = time.perf_counter()

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training pixels, the usual constants
TEST_BATCH_SIZE = 1000


class LeNet5(nn.Module):
    """LeNet-5 as tutorials write it today: ReLU, max pooling, padding 2 on the first conv."""

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


def train(model, loader, optimizer) -> tuple[int, int, float]:
    model.train()
    images = steps = 0
    running_loss = 0.0
    for data, target in loader:
        optimizer.zero_grad()
        output = model(data)
        loss = F.cross_entropy(output, target)
        loss.backward()
        optimizer.step()
        running_loss += loss.item() * len(target)
        images += len(target)
        steps += 1
    return images, steps, running_loss / max(images, 1)


def test(model, loader) -> tuple[int, float]:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data, target in loader:
            correct += (model(data).argmax(dim=1) == target).sum().item()
            total += len(target)
    return total, correct / max(total, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="torchvision root holding FashionMNIST/raw")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--out", default=None, help="folder for model.pt and metrics.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    full = datasets.FashionMNIST(args.root, train=True, download=False, transform=transform)
    test_set = datasets.FashionMNIST(args.root, train=False, download=False, transform=transform)
    n_val = int(len(full) * args.val_fraction)
    split = torch.Generator().manual_seed(args.seed)
    train_set, val_set = random_split(full, [len(full) - n_val, n_val], generator=split)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    val_loader = DataLoader(val_set, batch_size=TEST_BATCH_SIZE)
    test_loader = DataLoader(test_set, batch_size=TEST_BATCH_SIZE)
    model = LeNet5()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    loaded = time.perf_counter()

    train_images = steps = val_images = 0
    train_s = eval_s = 0.0
    history = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        images, epoch_steps, loss = train(model, train_loader, optimizer)
        middle = time.perf_counter()
        seen, val_acc = test(model, val_loader)
        train_s += middle - start
        eval_s += time.perf_counter() - middle
        train_images, steps, val_images = train_images + images, steps + epoch_steps, val_images + seen
        history.append({"epoch": epoch, "train_loss": loss, "val_acc": val_acc})
        print(f"epoch {epoch}: loss {loss:.4f}, validation accuracy {val_acc:.4f}", flush=True)
    start = time.perf_counter()
    test_images, test_acc = test(model, test_loader)
    eval_s += time.perf_counter() - start
    print(f"test accuracy {test_acc:.4f}", flush=True)

    start = time.perf_counter()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), out / "model.pt")
        (out / "metrics.json").write_text(json.dumps({"history": history, "test_acc": test_acc}))
    finished = time.perf_counter()
    report = {
        "train_images": train_images,
        "steps": steps,
        "val_images": val_images,
        "test_images": test_images,
        "val_acc": history[-1]["val_acc"] if history else float("nan"),
        "test_acc": test_acc,
        "parameters": sum(p.numel() for p in model.parameters()),
        "seconds": {
            "imports": IMPORTED - STARTED,
            "data_and_model": loaded - IMPORTED,
            "training": train_s,
            "evaluation": eval_s,
            "writing": finished - start,
            "in_script": finished - STARTED,
        },
    }
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
