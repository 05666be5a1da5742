"""study.common.executor: which units share a pack, and the one resume rule with packs (only the
units not saved yet are packed, and every output of a pack is saved)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from lenet_core.config import TrialConfig
from lenet_core.errors import ConfigError
from study.common.context import DEFAULT_PACK, RunContext, check_pack
from study.common.executor import pack_units, packable, run_units

LENET = TrialConfig(dataset="digits", epochs=1)


@dataclass(frozen=True)
class Unit:
    name: str
    config: TrialConfig


@dataclass
class Output:
    summary: dict[str, Any]


def _units(configs: list[TrialConfig]) -> list[Unit]:
    return [Unit(f"u{i}", c) for i, c in enumerate(configs)]


def _names(tasks: list[list[Unit]]) -> list[list[str]]:
    return [[u.name for u in task] for task in tasks]


def test_units_of_one_shape_pack_in_near_equal_packs_of_at_most_k_in_order():
    units = _units([LENET.replace(seed=s) for s in range(10)])
    assert _names(pack_units(units, 4)) == [
        ["u0", "u1", "u2", "u3"],
        ["u4", "u5", "u6"],
        ["u7", "u8", "u9"],
    ]
    assert _names(pack_units(units, 1)) == [[u.name] for u in units]  # --no-pack
    assert [len(t) for t in pack_units(units, 5)] == [5, 5]
    assert [len(t) for t in pack_units(units, 16)] == [10]


def test_packs_never_leave_the_cluster_idle():
    units = _units([LENET.replace(seed=s) for s in range(5)])
    # 5 units on 2 cores: packs of 3 and 2 side by side, not one of 5 beside an idle core
    assert [len(t) for t in pack_units(units, 5, concurrent=2)] == [3, 2]
    assert [len(t) for t in pack_units(units, 5, concurrent=8)] == [1] * 5


def test_a_resnet_fp16_or_another_shape_never_shares_a_pack():
    resnet = LENET.replace(model="resnet18", variant=None, activation=None, pooling=None)
    configs = [
        resnet,  # first, as the ensemble orders it: its task starts first
        LENET.replace(seed=1),
        LENET.replace(seed=2, lr=0.01),  # optimizer fields differ: one pack still
        LENET.replace(seed=3, batch_size=128),  # another batch shape
        LENET.replace(seed=4, precision="fp16"),  # a gradient scaler per model
        LENET.replace(seed=5, batch_size=128),
        LENET.replace(seed=6),
    ]
    assert not packable(resnet) and not packable(configs[4]) and packable(configs[1])
    tasks = _names(pack_units(_units(configs), 5))
    assert tasks == [["u0"], ["u1", "u2", "u6"], ["u3", "u5"], ["u4"]]


def test_pack_values():
    assert DEFAULT_PACK == 5
    assert check_pack(1) == 1 and check_pack(7) == 7
    for bad in (0, -3, 2.5, True, "4"):
        with pytest.raises(ConfigError, match="--pack must be a whole number >= 1"):
            check_pack(bad)


# ------------------------------------------------------------------ run_units on Ray, with packs


def alone(unit: Unit, data: Any) -> Output:
    """The stage's work on one unit (runs in a Ray worker)."""
    return Output(summary={"trained": [unit.name], "device": unit.config.device})


def together(units: list[Unit], data: Any) -> list[Output]:
    """The stage's work on a pack (runs in a Ray worker): one output per unit, in order."""
    names = [u.name for u in units]
    return [Output(summary={"trained": names, "device": u.config.device}) for u in units]


@dataclass
class MemoryStore:
    saved: dict[str, Output] = field(default_factory=dict)
    saves: list[str] = field(default_factory=list)

    def load(self, unit: Unit) -> Output | None:
        return self.saved.get(unit.name)

    def save(self, unit: Unit, output: Output) -> None:
        self.saved[unit.name] = output
        self.saves.append(unit.name)

    def note(self, unit: Unit, output: Output) -> str:
        return unit.name


@pytest.mark.usefixtures("shared_ray")
def test_resume_packs_only_the_missing_units_and_saves_every_output(digits, tmp_path):
    lines: list[str] = []
    context = RunContext(data=digits, out=tmp_path, name="x", progress=lines.append, pack=3)
    units = _units([LENET.replace(seed=s) for s in range(7)])
    store = MemoryStore(saved={name: Output(summary={"trained": "before"}) for name in ("u0", "u3")})
    outputs = run_units(
        units,
        work=alone,
        work_pack=together,
        pack=context.pack,
        store=store,
        context=context,
        label="units",
        then=lambda found: found,
    )
    assert set(outputs) == {u.name for u in units}
    assert outputs["u0"].summary == {"trained": "before"}  # read back, not trained
    assert sorted(store.saves) == ["u1", "u2", "u4", "u5", "u6"]  # each missing one, once
    packs = {tuple(store.saved[n].summary["trained"]) for n in store.saves}
    assert sorted(map(len, packs)) == [2, 3] and set().union(*packs) == set(store.saves)
    # placed in the worker like a unit alone: device and threads, where, and with how many
    assert {store.saved[n].summary["device"] for n in store.saves} == {"cpu"}
    assert all(store.saved[n].summary["pack_size"] in (2, 3) for n in store.saves)
    assert all("node_id" in store.saved[n].summary for n in store.saves)
    assert "5 units to train, 2 read back" in lines[0] and "5 of them in 2 packs of up to 3" in lines[0]
    # --no-pack: every unit alone, through the single-unit work
    store = MemoryStore()
    outputs = run_units(
        units[:3],
        work=alone,
        work_pack=together,
        pack=1,
        store=store,
        context=context,
        label="units",
        then=lambda found: found,
    )
    assert [store.saved[n].summary["trained"] for n in ("u0", "u1", "u2")] == [["u0"], ["u1"], ["u2"]]
    assert {o.summary["pack_size"] for o in outputs.values()} == {1}
