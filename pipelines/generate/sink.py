"""The generation sink: streaming, exactly-once appends to a dataset and its quarantine table.

Ray's own `write_delta` makes one commit at the end and carries no metadata, so a run killed
at 90% would leave nothing. Here every `commit_every` rows become one Delta commit on each
table, and each commit carries the lineage of its rows in its metadata (run id, teacher, base
fingerprint, config hash, the batch's expectation summary) and an application transaction
`(app_id, n)` that counts the run's commits.

Exactly once: deltalake records application transactions but does not enforce them, so the
sink also keys every row by `prompt_id`. It keeps the set of ids each table holds and, before
every commit, drops rows already there; the commit is made with no automatic retry against
the snapshot that set was read from, and a lost race (another writer committed meanwhile)
re-reads the ids and tries again. A retried Ray task, a resumed run and a concurrent writer
therefore never duplicate a row.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from germline.core import InputError, plain

log = logging.getLogger(__name__)

KEY = "prompt_id"
TABLE_NAME = "germline.dataset"
QUARANTINE_NAME = "germline.quarantine"
TEACHER_PROPERTY = "germline.teacher"
MAX_ATTEMPTS = 100

# The columns every generated row keeps: where it came from and how it was sampled.
ROW_SCHEMA = pa.schema(
    [
        pa.field(KEY, pa.string(), nullable=False),
        pa.field("prompt_index", pa.int64()),
        pa.field("family", pa.string()),
        pa.field("prompt", pa.string()),
        pa.field("completion", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("teacher_id", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("temperature", pa.float64()),
        pa.field("top_p", pa.float64()),
        pa.field("max_tokens", pa.int32()),
        pa.field("sampling_seed", pa.int64()),
        pa.field("prompt_tokens", pa.int32()),
        pa.field("completion_tokens", pa.int32()),
        pa.field("finish_reason", pa.string()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [
        *ROW_SCHEMA,
        pa.field("stage", pa.string()),  # "filter" or "expect"
        pa.field("filter", pa.string()),  # the filter or expectation that rejected the row
        pa.field("reason", pa.string()),
    ]
)


@dataclass
class _Table:
    """One Delta table the sink appends to, with the ids it holds as of `version`."""

    uri: str
    name: str
    schema: pa.Schema
    storage_options: dict[str, str]
    dt: DeltaTable | None = None
    ids: set[str] = field(default_factory=set)
    version: int = -1

    def refresh(self) -> None:
        """Load the latest snapshot; re-read the ids only if someone else committed."""
        if self.dt is None:
            self.dt = DeltaTable(self.uri, storage_options=self.storage_options)
        else:
            self.dt.update_incremental()
        if self.dt.version() != self.version:
            self.ids = set(read_ids(self.dt))
            self.version = self.dt.version()


def drop_ids(rows: pa.Table, ids: set[str]) -> pa.Table:
    """The rows whose prompt id is not in `ids`. Looks each row up in the set rather than
    handing the set to Arrow, so the cost follows the batch, not the table's size."""
    if not ids or rows.num_rows == 0:
        return rows
    keep = [i not in ids for i in rows.column(KEY).to_pylist()]
    return rows if all(keep) else rows.filter(pa.array(keep, pa.bool_()))


def _in_order(rows: pa.Table) -> pa.Table:
    """The rows as one chunk, in prompt order. deltalake's writer spreads a table's chunks
    over its partitions (one per core) and writes whichever partition finishes first, first:
    a table of several chunks (a commit's batches) landed in another row order on every write.
    One chunk is written as it is."""
    keys = [("prompt_index", "ascending"), (KEY, "ascending")]
    return rows.take(pc.sort_indices(rows, sort_keys=keys)).combine_chunks()


def read_ids(dt: DeltaTable) -> list[str]:
    """Every prompt id in a table's snapshot (one column scanned)."""
    reader = QueryBuilder().register("t", dt).execute(f'SELECT "{KEY}" FROM t')
    table = pa.table(reader)
    return table.column(KEY).to_pylist() if table.num_rows else []


def _open_or_create(
    uri: str,
    name: str,
    schema: pa.Schema,
    teacher_id: str,
    storage_options: dict[str, str],
) -> DeltaTable:
    local = None if "://" in uri else Path(uri)
    try:
        dt = DeltaTable(uri, storage_options=storage_options)
    except TableNotFoundError:
        if local is not None and local.exists() and any(local.iterdir()):
            raise InputError(f"{uri} holds files but is not a Delta table") from None
        try:
            return DeltaTable.create(
                uri,
                schema,
                mode="ignore",  # another writer may create it at the same moment
                name=name,
                description=f"germline {name}",
                configuration={TEACHER_PROPERTY: teacher_id},
                storage_options=storage_options,
                raise_if_key_not_exists=False,
            )
        except (DeltaError, OSError) as exc:
            raise InputError(f"cannot create the table {uri}: {plain(exc)}") from None
    except (DeltaError, OSError) as exc:
        raise InputError(f"cannot open the table {uri}: {plain(exc)}") from None
    meta = dt.metadata()
    if meta.name != name:
        raise InputError(f"{uri} is not a germline {name.split('.')[-1]} table ({meta.name!r})")
    owner = meta.configuration.get(TEACHER_PROPERTY)
    if owner != teacher_id:
        raise InputError(
            f"{uri} holds rows of teacher {owner}, not {teacher_id}: one dataset, one teacher "
            "(choose another dataset name)"
        )
    missing = set(schema.names) - set(dt.schema().to_arrow().names)
    if missing:
        raise InputError(f"{uri} lacks the columns {sorted(missing)}")
    return dt


class DatasetSink:
    """Appends accepted rows to `<lake>/datasets/NAME` and rejected rows to
    `<lake>/quarantine/NAME`, one commit per table per `write`, exactly once per prompt id."""

    def __init__(
        self,
        dataset_uri: str,
        quarantine_uri: str,
        teacher_id: str,
        app_id: str,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        opts = storage_options or {}
        self.app_id = app_id
        self.accepted = _Table(dataset_uri, TABLE_NAME, ROW_SCHEMA, opts)
        self.quarantine = _Table(quarantine_uri, QUARANTINE_NAME, QUARANTINE_SCHEMA, opts)
        for table in (self.accepted, self.quarantine):
            table.dt = _open_or_create(table.uri, table.name, table.schema, teacher_id, opts)
            table.refresh()
        self.commits = 0

    def done_ids(self) -> set[str]:
        """Prompt ids already answered: in the dataset or in quarantine."""
        return self.accepted.ids | self.quarantine.ids

    def _drop_done(self, rows: pa.Table) -> pa.Table:
        return drop_ids(drop_ids(rows, self.accepted.ids), self.quarantine.ids)

    def write(self, accepted: pa.Table, rejected: pa.Table, metadata: dict[str, object]) -> int:
        """Commit both tables; returns how many rows were new. A prompt id already in either
        table is skipped: it was written by an earlier attempt of the same work."""
        new = 0
        for table, rows in ((self.accepted, accepted), (self.quarantine, rejected)):
            rows = rows.select(table.schema.names).cast(table.schema)
            rows = self._drop_done(rows)
            new += self._commit(table, rows, metadata)
        return new

    def _commit(self, table: _Table, rows: pa.Table, metadata: dict[str, object]) -> int:
        if rows.num_rows == 0:
            return 0
        custom = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
        for attempt in range(MAX_ATTEMPTS):
            # Optimistic: commit on the snapshot the sink last saw (no log listing per
            # commit); if another writer got there first the commit fails, and only then
            # does the sink re-read the table and its ids.
            if attempt:
                table.refresh()
            assert table.dt is not None
            rows = drop_ids(rows, table.ids)
            if rows.num_rows == 0:
                return 0
            sequence = (table.dt.transaction_version(self.app_id) or 0) + 1
            props = CommitProperties(
                custom_metadata=custom,
                app_transactions=[Transaction(self.app_id, sequence)],
                max_commit_retries=0,
            )
            try:
                write_deltalake(table.dt, _in_order(rows), mode="append", commit_properties=props)
            except CommitFailedError:
                log.debug("commit conflict on %s (attempt %d)", table.uri, attempt + 1)
                time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** min(attempt, 6))))
                continue
            except (DeltaError, OSError) as exc:
                raise InputError(f"cannot write to {table.uri}: {plain(exc)}") from None
            # write_deltalake moved `dt` to the version it just made, so the ids are current.
            table.ids.update(rows.column(KEY).to_pylist())
            table.version = table.dt.version()
            self.commits += 1
            return rows.num_rows
        raise InputError(f"gave up writing {table.uri} after {MAX_ATTEMPTS} conflicting commits")
