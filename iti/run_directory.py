"""One experiment's output directory: one writer at a time, the settings of the run it holds, and what a changed
setting may do there.

Every experiment that writes into a directory goes through :class:`RunDirectory`:

- :meth:`RunDirectory.check` (reads only, before anything loads): a directory holding a run with other settings,
  or outputs that record none, is refused with :class:`~iti.errors.OutputExistsError` naming what differs, unless
  ``force``; the same settings resume there;
- :meth:`RunDirectory.claimed` (a context manager around the whole run): the lock (:func:`iti.locks.output_lock`:
  a second writer is refused at once), the check again (the directory may have changed since), with ``force`` the
  other run's outputs removed *before* any new one is written (so an interrupted run never leaves one run's
  summary beside another's rows), and the settings recorded atomically.
"""
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import OutputExistsError
from .io import atomic_write_json, read_json
from .locks import output_lock


@dataclass(frozen=True)
class RunDirectory:
    """``path``: the directory; ``what``: the run in words (for messages); ``record``: the file holding the
    settings (``settings_key``: the key inside it, None = the whole file); ``outputs``: glob patterns of what a run
    writes (removed by ``force`` when another run's); ``older_records``: (file, key) pairs where an older version
    kept the settings; ``record_needs_outputs``: a record beside no output holds no run yet (a run that records its
    settings before its first row, as TruthfulQA validation does, and stopped before it)."""

    path: Path
    what: str
    record: str = "run.json"
    settings_key: str | None = None
    outputs: tuple[str, ...] = ()
    older_records: tuple[tuple[str, str], ...] = ()
    record_needs_outputs: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def stored_settings(self) -> dict[str, Any] | None:
        """The settings the directory's run recorded; ``{}`` for outputs that record none; None for no run."""
        if self.record_needs_outputs and not self._outputs():
            return None
        for name, key in ((self.record, self.settings_key), *self.older_records):
            file = self.path / name
            if not file.is_file():
                continue
            stored = read_json(file, f"{self.what} record")
            if key is not None:
                stored = stored.get(key) if isinstance(stored, dict) else None
            if isinstance(stored, dict):
                return stored
        return {} if self._outputs() else None

    def _outputs(self) -> list[Path]:
        found = {p for pattern in self.outputs for p in self.path.glob(pattern)}
        return sorted(found)

    def difference(self, settings: dict[str, Any]) -> str | None:
        """What differs between the stored run's settings and ``settings`` (compared on the keys of ``settings``),
        in words; None when nothing does or no run is here."""
        from .fingerprint import canonical_json, describe_difference

        stored = self.stored_settings()
        if stored is None:
            return None
        if not stored:
            return "unknown settings: its outputs record none (an older iti, or another tool, wrote them)"
        recorded = {k: stored[k] for k in settings if k in stored}
        said = describe_difference(recorded, settings)
        if said == "nothing":
            return None
        unrecorded = [k for k in settings if k not in stored]
        if unrecorded and describe_difference(recorded, {k: v for k, v in settings.items() if k in stored}) == "nothing":
            named = ", ".join(k if k.endswith("_sha256") else f'"{k}": {canonical_json(settings[k])}' for k in unrecorded)
            return (f"settings recorded by an older iti that did not record {named}; if its outputs were computed so, add "
                    f"that to {self.path / self.record} to keep them")
        return said

    def check(self, settings: dict[str, Any], *, force: bool = False) -> None:
        """Refuse a directory holding another run (see the module docstring) unless ``force``. Reads only."""
        self._refuse_unless_forced(self.difference(settings), force)

    def _refuse_unless_forced(self, differ: str | None, force: bool) -> None:
        if differ is not None and not force:
            raise OutputExistsError(f"{self.path} holds a {self.what} with other settings ({differ}); pass --force to "
                                    "replace it, or choose another output directory")

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDirectory]:
        """Hold the directory's lock for the block (a second writer is refused at once); :meth:`claim` inside it."""
        with output_lock(self.path, f"{self.what} directory"):
            yield self

    def claim(self, settings: dict[str, Any], *, force: bool = False, extra: dict[str, Any] | None = None) -> None:
        """Under :meth:`locked`: check, with ``force`` remove another run's outputs first, then record ``settings``
        (and ``extra``, recorded but not compared)."""
        differ = self.difference(settings)
        self._refuse_unless_forced(differ, force)
        if differ is not None:  # only with force
            print(f"[{self.what}] --force: removing the outputs of a run with {differ} from {self.path}", flush=True)
            for p in self._outputs():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            for name, _ in self.older_records:
                (self.path / name).unlink(missing_ok=True)
        body = dict(settings) if self.settings_key is None else {self.settings_key: settings}
        atomic_write_json(self.path / self.record, {**body, **(extra or {})})

    @contextlib.contextmanager
    def claimed(self, settings: dict[str, Any], *, force: bool = False, extra: dict[str, Any] | None = None) -> Iterator[Path]:
        """Hold the directory for the block: lock, check, with ``force`` remove another run's outputs first, record
        ``settings`` (and ``extra``, recorded but not compared)."""
        with self.locked():
            self.claim(settings, force=force, extra=extra)
            yield self.path
