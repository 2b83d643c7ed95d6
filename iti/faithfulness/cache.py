"""A SQLite cache of text generations, so slow generations run once and reruns are served from disk.

Why the key is what it is: a cached response may only be reused when every input that can change the text is
the same. A :class:`GenerationKey` therefore hashes (SHA-256 over canonical JSON) four things:

* ``model`` -- the model id, e.g. ``"smollm2-135m"``, a hub id, or ``"baked:<sha>"`` for weights with an
  intervention baked in;
* ``intervention`` -- a *content* fingerprint of the steering edit (a hash of its directions, heads and
  strength), never a display name such as ``"alpha=15"``: a refitted direction under the same name must not
  be served the old outputs. ``""`` (or ``"none"``, normalised to ``""``) means the plain model, so plain
  and intervened outputs of the same prompt can never collide;
* ``prompt`` -- the fully rendered prompt, after the chat template, so a changed template or system prompt
  is a miss rather than a stale hit;
* ``settings`` -- every generation setting (temperature, top_p, top_k, repetition_penalty,
  max_new_tokens, seed, stop strings, ...) and whatever else changes the text that the model id does not say
  (a local model's compute dtype: the weights' fingerprint is the same in float32 and bfloat16). Keys are
  sorted, so dict order does not matter; values are compared by their JSON text, so build them consistently
  (``1`` and ``1.0`` differ).

Why SQLite in WAL mode with ``BEGIN IMMEDIATE`` writes: several processes (an in-process run and a run
against a remote OpenAI-compatible server, say) may fill the same file at once; WAL lets readers and one
writer proceed together, the busy timeout makes the other writers wait instead of failing, and an explicit
transaction means a crash never leaves a half-written batch. The digest is the primary key, but model,
intervention, prompt and settings are kept as readable columns so the file can be inspected with
``sqlite3``. Values are plain text and JSON, never pickle, so opening a cache someone else wrote cannot run
code.

Failures are cached too (a prompt longer than the model's context fails the same way every time); ``get``
returns them like any other entry and the caller decides whether to retry. A success records whether the answer
stopped at the token limit (``truncated``; unknown, None, for entries a version-1 file held).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .errors import CacheFileError

__all__ = ["CacheFileError", "CachedGeneration", "GenerationCache", "GenerationKey", "PLAIN", "SCHEMA_VERSION"]

SCHEMA_VERSION = 2
"""Stored in ``PRAGMA user_version``; bump it whenever the table layout or the key derivation changes. Version 2
added the ``truncated`` column; a version-1 file is upgraded in place when opened (its entries: unknown)."""

PLAIN = ""
"""The ``intervention`` value of the plain (unsteered) model."""

_TABLE = "generations"
_CHUNK = 500  # keys per SELECT ... IN (...); well below SQLite's oldest host-parameter limit (999)
_CREATE = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    intervention TEXT NOT NULL,
    prompt TEXT NOT NULL,
    settings TEXT NOT NULL,
    response TEXT,
    error TEXT,
    duration REAL NOT NULL,
    created REAL NOT NULL,
    truncated INTEGER
) WITHOUT ROWID
"""
_INSERT = (
    f"INSERT OR REPLACE INTO {_TABLE} (key, model, intervention, prompt, settings, response, error, duration, created, "
    "truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_BUSY_CODES = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED: contention, not a bad file




def _canonical_json(obj: Any) -> str:
    """One JSON text per value: sorted keys, no whitespace, raw unicode, no NaN (it would never equal itself)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True, eq=False)
class GenerationKey:
    """Everything that determines a generation's text; two keys are equal exactly when their digests are.

    ``intervention`` must be a content hash of the steering edit (or ``""``/``"none"`` for the plain model),
    not a name, so that changing the edit changes the key. ``settings`` is copied into a read-only mapping so
    a key cannot change after it was hashed.
    """

    model: str
    intervention: str
    prompt: str
    settings: Mapping[str, Any]

    def __post_init__(self) -> None:
        for name in ("model", "intervention", "prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"GenerationKey.{name} must be a str, got {type(value).__name__}")
        if not self.model:
            raise ValueError("GenerationKey.model must not be empty")
        if self.intervention == "none":
            object.__setattr__(self, "intervention", PLAIN)
        if not isinstance(self.settings, Mapping):
            raise TypeError(f"GenerationKey.settings must be a mapping, got {type(self.settings).__name__}")
        bad = [k for k in self.settings if not isinstance(k, str)]
        if bad:
            # JSON would turn 1 into "1" and make {1: x} and {"1": x} collide.
            raise TypeError(f"GenerationKey.settings keys must be str, got {bad!r}")
        settings = dict(self.settings)
        try:
            settings_json = _canonical_json(settings)
        except (TypeError, ValueError) as e:
            raise TypeError(f"GenerationKey.settings must be JSON-serialisable (str, int, float, bool, None, lists, "
                            f"dicts; no NaN): {e}") from e
        object.__setattr__(self, "settings", MappingProxyType(settings))
        object.__setattr__(self, "_settings_json", settings_json)
        payload = {"model": self.model, "intervention": self.intervention, "prompt": self.prompt, "settings": settings}
        object.__setattr__(self, "_digest", hashlib.sha256(_canonical_json(payload).encode("utf-8")).hexdigest())

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON of all four fields; the cache's primary key."""
        return self._digest  # type: ignore[attr-defined]

    def settings_json(self) -> str:
        """The settings as canonical JSON, as stored in the readable ``settings`` column."""
        return self._settings_json  # type: ignore[attr-defined]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationKey):
            return NotImplemented
        return self.digest() == other.digest()

    def __hash__(self) -> int:
        return hash(self.digest())

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only settings view cannot be pickled; rebuild from plain fields (keys go to worker processes).
        return (GenerationKey, (self.model, self.intervention, self.prompt, dict(self.settings)))


@dataclass
class CachedGeneration:
    """One cached outcome: a response on success, or an error description on failure (exactly one is set);
    ``truncated``: whether the response stopped at the token limit (None: not known, or a failure)."""

    response: str | None
    error: str | None
    duration: float
    truncated: bool | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def ok(self) -> bool:
        """True for a successful generation."""
        return self.error is None

    def validate(self) -> None:
        """Raise ValueError unless exactly one of response/error is a str and duration is a finite number >= 0."""
        if (self.response is None) == (self.error is None):
            raise ValueError("CachedGeneration needs exactly one of response (success) or error (failure), got "
                             f"response={self.response!r}, error={self.error!r}")
        for name in ("response", "error"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"CachedGeneration.{name} must be a str or None, got {type(value).__name__}")
        if isinstance(self.duration, bool) or not isinstance(self.duration, (int, float)):
            raise ValueError(f"CachedGeneration.duration must be a number of seconds, got {self.duration!r}")
        if not math.isfinite(self.duration) or self.duration < 0:
            raise ValueError(f"CachedGeneration.duration must be finite and >= 0, got {self.duration!r}")
        if self.truncated is not None and (not isinstance(self.truncated, bool) or self.error is not None):
            raise ValueError(f"CachedGeneration.truncated must be None or, for a response, a bool; got {self.truncated!r}")


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back on any error, so a
    crash never leaves half a batch."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class GenerationCache:
    """A generation cache in one SQLite file, safe to share between threads (one lock) and processes (WAL)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 60.0) -> None:
        """Open or create the cache at ``path``; writers wait up to ``timeout`` seconds for each other."""
        self.path = Path(path)
        self.timeout = float(timeout)
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise self._file_error(f"it cannot be opened as a SQLite database ({e})") from e
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
            self._setup(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.DatabaseError) and not _is_contention(e):
                raise self._file_error(f"it is not a readable SQLite database ({e})") from e
            raise
        self._conn: sqlite3.Connection | None = conn

    def _file_error(self, what: str) -> CacheFileError:
        return CacheFileError(f"Generation cache {str(self.path)!r} cannot be used: {what}. "
                              "Delete the file (and any -wal/-shm files beside it) to start a fresh cache, "
                              "or pass another path.")

    def _setup(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL and check or create the schema, retrying while another process holds the file.

        Switching a new file to WAL needs an exclusive lock and SQLite reports "database is locked" at once
        instead of calling the busy handler, so two processes opening a fresh cache together need this loop.
        """
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                self._init_schema(conn)
                return
            except sqlite3.OperationalError as e:
                if not _is_contention(e) or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        """Create the table on a new file, or check that an existing file is a cache of this schema version."""
        with _immediate(conn):  # two processes creating the same file must not race
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version == 0 and not tables:
                conn.execute(_CREATE)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version == 0:
                raise self._file_error(f"it is a SQLite database of another program (tables {sorted(tables)}), "
                                       "not a generation cache")
            elif version == 1 and _TABLE in tables:  # version 2 added one column: upgrade, entries keep working
                conn.execute(f"ALTER TABLE {_TABLE} ADD COLUMN truncated INTEGER")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise self._file_error(f"it has cache schema version {version}, this library reads version "
                                       f"{SCHEMA_VERSION}")
            elif _TABLE not in tables:
                raise self._file_error(f"it has schema version {version} but no {_TABLE!r} table")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ValueError(f"Generation cache {str(self.path)!r} is closed")
        return self._conn

    def get(self, key: GenerationKey) -> CachedGeneration | None:
        """The cached outcome for ``key`` (success or failure), or None on a miss."""
        with self._lock:
            row = self._db.execute(f"SELECT response, error, duration, truncated FROM {_TABLE} WHERE key = ?",
                                   (key.digest(),)).fetchone()
        return None if row is None else _outcome(*row)

    def get_many(self, keys: Sequence[GenerationKey]) -> list[CachedGeneration | None]:
        """Outcomes in the order of ``keys`` (None for misses), with one query per chunk of up to 500 keys."""
        digests = [k.digest() for k in keys]
        unique = list(dict.fromkeys(digests))
        found: dict[str, CachedGeneration] = {}
        with self._lock:
            db = self._db
            for start in range(0, len(unique), _CHUNK):
                chunk = unique[start:start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT key, response, error, duration, truncated FROM {_TABLE} WHERE key IN ({marks})"
                for digest, *row in db.execute(sql, chunk):
                    found[digest] = _outcome(*row)
        return [found.get(d) for d in digests]

    def put(self, key: GenerationKey, value: CachedGeneration) -> None:
        """Store (or replace) one outcome."""
        self.put_many([(key, value)])

    def put_many(self, items: Sequence[tuple[GenerationKey, CachedGeneration]]) -> None:
        """Store (or replace) outcomes in one transaction: all of them are written or none.

        Every value is validated before anything is written, so a bad item leaves the file untouched.
        """
        now = time.time()
        rows = []
        for key, value in items:
            if not isinstance(key, GenerationKey):
                raise TypeError(f"expected a GenerationKey, got {type(key).__name__}")
            value.validate()  # CachedGeneration is mutable; check again what is actually written
            rows.append((key.digest(), key.model, key.intervention, key.prompt, key.settings_json(),
                         value.response, value.error, float(value.duration), now,
                         None if value.truncated is None else int(value.truncated)))
        if not rows:
            return
        with self._lock, _immediate(self._db) as db:
            db.executemany(_INSERT, rows)

    def delete_many(self, keys: Sequence[GenerationKey]) -> int:
        """Remove the outcomes of ``keys`` in one transaction; returns how many there were."""
        digests = list(dict.fromkeys(k.digest() for k in keys))
        removed = 0
        with self._lock, _immediate(self._db) as db:
            for start in range(0, len(digests), _CHUNK):
                chunk = digests[start:start + _CHUNK]
                removed += db.execute(f"DELETE FROM {_TABLE} WHERE key IN ({','.join('?' * len(chunk))})", chunk).rowcount
        return removed

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0]

    def __bool__(self) -> bool:
        """Always true, so ``if cache:`` tests for a cache rather than for a non-empty one."""
        return True

    def stats(self) -> dict[str, int]:
        """``{"entries": all rows, "errors": rows that record a failure}``."""
        with self._lock:
            entries, errors = self._db.execute(
                f"SELECT COUNT(*), COUNT(error) FROM {_TABLE}").fetchone()
        return {"entries": entries, "errors": errors}

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"GenerationCache({str(self.path)!r}, {state})"


def _outcome(response: str | None, error: str | None, duration: float, truncated: int | None) -> CachedGeneration:
    """A stored row as a :class:`CachedGeneration` (``truncated`` is stored as 0/1/NULL)."""
    return CachedGeneration(response, error, duration, None if truncated is None else bool(truncated))


def _is_contention(e: sqlite3.DatabaseError) -> bool:
    """True for 'database is locked/busy' (wait longer), false for a bad file."""
    code = getattr(e, "sqlite_errorcode", None)  # Python >= 3.11
    if code is not None:
        return (code & 0xFF) in _SQLITE_BUSY_CODES
    message = str(e).lower()
    return "locked" in message or "busy" in message
