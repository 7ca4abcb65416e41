"""Append-only Delta tables that never hold the same key twice, even under concurrent writers.

deltalake records application transactions but does not enforce them, and its own commit
retry rebases a blind append onto whatever landed meanwhile. So each write here pins the
snapshot it checked (keys already present, caller's validation), commits with no automatic
retry, and on a lost race re-reads and checks again. That is optimistic concurrency with the
check inside the transaction: exactly-once rows, on a local folder or an object store.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, QueryBuilder, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from germline.core import plain
from germline.lineage.errors import LineageError

MAX_ATTEMPTS = 200
log = logging.getLogger(__name__)

Validator = Callable[[DeltaTable | None, pa.Table], None]


class KeyedTable:
    """One Delta table of rows identified by `key` columns, tagged with a table name that
    tells it apart from foreign tables at the same place."""

    def __init__(
        self,
        uri: str,
        name: str,
        schema: pa.Schema,
        key: Sequence[str],
        storage_options: dict[str, str] | None = None,
    ) -> None:
        self.uri = uri
        self.name = name
        self.schema = schema
        self.key = list(key)
        self.storage_options = storage_options or {}
        self._init_cache()

    # -- the snapshot kept between calls ------------------------------------------------------
    # A register call reads the tables several times (kinds of the ends, keys present, the
    # acyclicity check), and opening a Delta table and scanning its files cost 40-60 ms each
    # on a local lake of 60 commits: most of an experiment step's lineage time. So the latest
    # snapshot is kept and brought up to date (a look at the log for newer commits, ~6 ms), and
    # the rows of one version are kept until the table moves on: a version's rows never change.
    def _init_cache(self) -> None:
        self._lock = threading.RLock()  # one process's threads share the kept snapshot
        self._latest: DeltaTable | None = None
        self._rows: tuple[int, pa.Table] | None = None  # (version, every row of it)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for name in ("_lock", "_latest", "_rows"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    # -- reading -------------------------------------------------------------------------
    def open(self, version: int | None = None) -> DeltaTable | None:
        """The table, checked to be ours; None when nothing has been written yet."""
        with self._lock:
            if version is None and self._latest is not None:
                try:
                    self._latest.update_incremental()
                    return self._latest
                except (DeltaError, OSError):  # gone or rewritten: open it afresh
                    self._latest = self._rows = None
            dt = self._open(version)
            if version is None:
                self._latest = dt
            return dt

    def _open(self, version: int | None) -> DeltaTable | None:
        local = None if "://" in self.uri else Path(self.uri)
        if local is not None and (not local.exists() or not any(local.iterdir())):
            return None
        # Another writer may be creating the table right now: its data files land before its
        # first commit. Give it a moment before calling the folder foreign.
        waits = [0.05, 0.1, 0.2, 0.4, 0.8, 1.6]
        while True:
            try:
                dt = DeltaTable(self.uri, version=version, storage_options=self.storage_options)
            except TableNotFoundError:
                if local is None:
                    return None
                if not waits:
                    raise LineageError(
                        f"{self.uri} holds files but is not a Delta table (foreign or corrupt)"
                    ) from None
                time.sleep(waits.pop(0))
                continue
            except (DeltaError, OSError) as exc:
                raise LineageError(
                    f"cannot read {self.name} table at {self.uri}: {plain(exc)}"
                ) from None
            self._check(dt)
            return dt

    def _check(self, dt: DeltaTable) -> None:
        meta_name = dt.metadata().name
        if meta_name != self.name:
            raise LineageError(
                f"{self.uri} is a foreign Delta table (name {meta_name!r}, expected {self.name!r})"
            )
        fields = {f.name for f in self.schema}
        have = set(dt.schema().to_arrow().names)
        if not fields <= have:
            missing = ", ".join(sorted(fields - have))
            raise LineageError(f"{self.uri} lacks the columns of a {self.name} table: {missing}")

    def read(
        self,
        columns: Sequence[str] | None = None,
        version: int | None = None,
        filter: ds.Expression | None = None,
    ) -> pa.Table:
        dt = self.open(version)
        if dt is None:
            empty = self.schema.empty_table()
            return empty.select(list(columns)) if columns else empty
        return self._scan(dt, columns, filter)

    def _scan(
        self, dt: DeltaTable, columns: Sequence[str] | None, filter: ds.Expression | None
    ) -> pa.Table:
        table = self._all_rows(dt)
        table = table.select(list(columns)) if columns else table
        return table.filter(filter) if filter is not None else table

    def _all_rows(self, dt: DeltaTable) -> pa.Table:
        """Every row of the snapshot `dt`, in the schema; kept for the next call."""
        version = dt.version()
        with self._lock:
            if self._rows is not None and self._rows[0] == version:
                return self._rows[1]
        # DataFusion (QueryBuilder) rather than to_pyarrow_dataset(): reading files through
        # the pyarrow dataset adapter with threads aborts the interpreter at exit
        # ("terminate called without an active exception", deltalake 1.6 / pyarrow 26).
        try:
            table = pa.table(QueryBuilder().register("t", dt).execute("SELECT * FROM t"))
        except (DeltaError, OSError, pa.ArrowException, Exception) as exc:
            raise LineageError(
                f"cannot read {self.name} table at {self.uri}: {plain(exc)}"
            ) from None
        names = self.schema.names
        table = self._conform(table) if table.num_rows else self.schema.empty_table()
        with self._lock:
            self._rows = (version, table.select(names))
        return self._rows[1]

    def _conform(self, table: pa.Table) -> pa.Table:
        return table.select(self.schema.names).cast(self.schema)

    def existing_keys(self, dt: DeltaTable | None, rows: pa.Table) -> pa.Table:
        """Key rows among `rows` that the snapshot `dt` already holds."""
        if dt is None or rows.num_rows == 0:
            return pa.table({k: pa.array([], self.schema.field(k).type) for k in self.key})
        first = self.key[0]
        wanted = pc.unique(rows.column(first))
        return self._scan(dt, self.key, ds.field(first).isin(wanted))

    # -- writing -------------------------------------------------------------------------
    def append_new(
        self,
        rows: pa.Table,
        validate: Validator | None = None,
        metadata: dict[str, str] | None = None,
    ) -> pa.Table:
        """Append the rows whose key is not yet in the table; return the rows written.

        `validate(snapshot, new_rows)` runs against the same snapshot the commit is based on,
        so a check such as "no cycle" holds even when another writer committed meanwhile.
        """
        rows = _first_per_key(rows.cast(self.schema), self.key)
        create_failed: DeltaError | None = None
        for attempt in range(MAX_ATTEMPTS):
            dt = self.open()
            if dt is None and create_failed is not None:  # nobody else made it: a real error
                raise LineageError(
                    f"cannot write {self.name} table at {self.uri}: {create_failed}"
                ) from None
            present = self.existing_keys(dt, rows)
            new = rows.join(present, self.key, join_type="left anti") if present.num_rows else rows
            if new.num_rows == 0:
                return new
            if validate is not None:
                validate(dt, new)
            props = CommitProperties(custom_metadata=metadata or {}, max_commit_retries=0)
            try:
                if dt is None:
                    write_deltalake(
                        self.uri,
                        new,
                        mode="error",
                        name=self.name,
                        description=f"germline {self.name}",
                        commit_properties=props,
                        storage_options=self.storage_options,
                    )
                else:
                    version = dt.version()
                    write_deltalake(dt, new, mode="append", commit_properties=props)
                    self._extend(version, new)
                return new
            except CommitFailedError:
                # Another writer won this version: re-read and check again.
                log.debug("commit conflict on %s (attempt %d), retrying", self.uri, attempt + 1)
            except DeltaError as exc:
                if dt is not None:
                    raise LineageError(
                        f"cannot write {self.name} table at {self.uri}: {plain(exc)}"
                    ) from None
                create_failed = exc  # perhaps another writer created it first: look again
            except OSError as exc:
                raise LineageError(
                    f"cannot write {self.name} table at {self.uri}: {plain(exc)}"
                ) from None
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** min(attempt, 6))))
        raise LineageError(f"gave up writing {self.uri} after {MAX_ATTEMPTS} conflicting commits")

    def _extend(self, version: int, new: pa.Table) -> None:
        """After our commit on `version` (no retry, so it is `version + 1`), that version's rows
        are the kept rows and ours: kept without reading them back."""
        with self._lock:
            if self._rows is not None and self._rows[0] == version:
                self._rows = (version + 1, pa.concat_tables([self._rows[1], self._conform(new)]))


def _first_per_key(rows: pa.Table, key: Sequence[str]) -> pa.Table:
    """Drop rows whose key repeats an earlier row's key within the same batch."""
    if rows.num_rows <= 1:
        return rows
    cols = [rows.column(k).to_pylist() for k in key]
    first: dict[tuple[object, ...], int] = {}
    for i, k in enumerate(zip(*cols, strict=True)):
        first.setdefault(k, i)
    if len(first) == rows.num_rows:
        return rows
    return rows.take(sorted(first.values()))
