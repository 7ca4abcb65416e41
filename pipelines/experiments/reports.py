"""A run's report files, for every experiment kind: where they go, its lineage picture, and
finding a report again by its run id.

Reports live in `<lake>/runs/<run-id>/` (report.md for people, report.json for programs, the
pictures beside them), on a local disk or an object store alike.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from germline.core import InputError
from germline.lineage import LineageStore
from germline.storage import Lake, LakeFolders


@contextmanager
def run_folder(lake: Lake, run_id: str) -> Iterator[Path]:
    """The local folder to write a run's files into: the run's own folder on a local lake; on
    an object store, this node's copy, uploaded (report.md last) when the block ends."""
    folders = LakeFolders(lake)
    uri = lake.run(run_id)
    folder = folders.cached(uri) if folders.remote else Path(uri)
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    if folders.remote:
        folders.put(folder, uri, last=("report.md",))


def float_machine() -> dict[str, str]:
    """What decides a run's floats besides its config: the CPU, the torch build and the kernel
    family torch picked for it (AVX2, AVX512...). One machine repeats a run bit for bit; two
    CPUs can pre-train different weights from the same seed, so a report names its machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "torch": torch.__version__,
            "kernels": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def lineage_picture(lake: Lake, teacher: str, out: Path) -> None:
    from germline.lineage.draw import draw

    graph = LineageStore(lake).graph()
    draw(graph.neighbourhood(teacher), out, focus=teacher)


def find_report(lake: Lake, run: str) -> str:
    """The folder (path or URI) of a run with a report, by run id or by the unique run id
    that starts with `run`."""
    folders = LakeFolders(lake)
    runs = lake.uri("runs")
    if folders.exists(f"{runs}/{run}/report.md"):
        return f"{runs}/{run}"
    known = [n for n in folders.names(runs) if folders.exists(f"{runs}/{n}/report.md")]
    matches = [n for n in known if n.startswith(run)]
    if len(matches) == 1:
        return f"{runs}/{matches[0]}"
    raise InputError(
        f"no report for {run!r}" + (f"; runs with reports: {', '.join(known)}" if known else "")
    )
