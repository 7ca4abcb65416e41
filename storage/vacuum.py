"""Files in the lake's tables that no commit references, and their removal.

A Delta commit writes its data file first and then races for the next log version; a writer
that loses (two lineage writers at once, say) retries with a new file, and the first one is
left behind, referenced by nothing. Readers never see such files, but they pile up (176 for
45 contended lineage commits, measured). germline only ever appends, so every file a commit
does not reference is one of these, and deltalake's full vacuum removes exactly them. A file
younger than `older_than_hours` is kept: it may be a commit still in flight.
"""

from __future__ import annotations

from dataclasses import dataclass

from deltalake import DeltaTable

from germline.storage.folders import LakeFolders
from germline.storage.lake import Lake


@dataclass(frozen=True)
class Swept:
    """One table's unreferenced files: listed, or removed when `removed`."""

    table: str
    files: tuple[str, ...]
    removed: bool


def lake_tables(lake: Lake) -> list[str]:
    """Every Delta table of the lake: lineage, probes, datasets and quarantine tables."""
    folders = LakeFolders(lake)
    candidates = [lake.lineage_nodes, lake.lineage_edges, lake.probes]
    candidates += [lake.dataset(n) for n in folders.names(lake.uri("datasets"))]
    candidates += [lake.quarantine(n) for n in folders.names(lake.uri("quarantine"))]
    options = lake.storage_options
    return [uri for uri in candidates if DeltaTable.is_deltatable(uri, options)]


def sweep(lake: Lake, older_than_hours: int = 1, apply: bool = False) -> list[Swept]:
    """The unreferenced files of every table, older than `older_than_hours`; removed only
    with `apply` (a removal is two commits, VACUUM START and END, so a table with nothing to
    remove is left untouched)."""
    if older_than_hours < 0:
        raise ValueError("older_than_hours must be 0 or more")
    swept = []
    for uri in lake_tables(lake):
        table = DeltaTable(uri, storage_options=lake.storage_options)

        def vacuum(dry_run: bool, table: DeltaTable = table) -> list[str]:
            return table.vacuum(
                retention_hours=older_than_hours,
                dry_run=dry_run,
                enforce_retention_duration=False,  # the table's default is a week
                full=True,  # every unreferenced file, not only those a commit removed
            )

        files = vacuum(dry_run=True)
        if files and apply:
            files = vacuum(dry_run=False)
        swept.append(Swept(uri, tuple(sorted(files)), bool(files) and apply))
    return swept
