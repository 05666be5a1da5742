"""``RunContext``: what every stage (train, tune, ensemble, sweep) is run with, in one value.

Before it, the same seven keyword arguments (data, cluster, out, name, resume, overwrite, say)
were threaded separately through four entry points. A stage now takes its own plan (what to
train) and one ``RunContext`` (where and how to run it, and where its files go).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from lenet_core.errors import ConfigError
from study.common.cluster import ClusterOptions
from study.common.files import run_folder

if TYPE_CHECKING:  # torch-free: the CLI builds a context before anything trains
    from lenet_core.data import ImageData

# Models of one shape trained together in one Ray task (lenet_core.packed): at most this many per
# pack unless --pack/--no-pack says otherwise. `study bench --pack` measured 1.36x the images/s of
# one model after another at K = 5 on a CPU core, levelling off above about 4; a GPU keeps the
# same default until it is measured there.
DEFAULT_PACK = 5


def check_pack(value: object) -> int:
    """``--pack K``: a whole number >= 1 (1: every model trains alone, as --no-pack)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"--pack must be a whole number >= 1 (1 trains every model alone), got {value!r}")
    return value


def _print(line: str) -> None:
    print(line)


@dataclass(frozen=True)
class RunContext:
    """Where a stage runs and writes: the dataset (loaded once), the Ray cluster, OUT/NAME, and
    whether an existing run is continued (``resume``) or replaced (``overwrite``)."""

    data: ImageData
    out: Path
    name: str
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    resume: bool = False
    overwrite: bool = False
    progress: Callable[[str], None] = _print  # one line of news per call (console, or a notebook)
    # the most models of one shape (ensemble members, sweep runs) trained as one pack, in one task
    pack: int = DEFAULT_PACK

    def __post_init__(self) -> None:
        check_pack(self.pack)

    @property
    def root(self) -> Path:
        """OUT/NAME: the study's folder; each stage writes its own sub-folder."""
        return self.out / self.name

    @contextmanager
    def stage_folder(self, stage: str) -> Iterator[Path]:
        """OUT/NAME/STAGE, locked for the run; refused if it holds results, unless resuming or
        overwriting (``study.common.files.run_folder``)."""
        with run_folder(self.out, self.name, stage, resume=self.resume, overwrite=self.overwrite) as folder:
            yield folder

    def but(self, **changes: object) -> RunContext:
        """The same context with some fields changed (a later stage resuming, say)."""
        return replace(self, **changes)  # type: ignore[arg-type]
