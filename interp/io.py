"""Files that are never seen half-written, and run folders that one writer owns.

A run folder, as `interp train` writes it:

    .lock                      held (flock) by the one process writing the folder; holds its pid and host
    config.json                a copy of the latest checkpoint's config, for people and `interp info`
    metrics.jsonl              one JSON line per evaluation, never from two runs
    checkpoints/step-<N>/      one checkpoint: config.json, model.safetensors, trainer_state.pt, manifest.json
    checkpoints/step-<M>/      the one before (the last KEEP are kept)

A checkpoint is written into a fresh `checkpoints/.tmp-<N>-<random>/`, its `manifest.json` (the step and
the sha256 of every file) last, and published by one `os.rename` to `step-<N>`. The rename is the only
commit point: a reader or a resume sees the old checkpoint or the new one, never a mix, and a crash
leaves at most a `.tmp-*` directory, removed by the next writer. There is no separate "latest" pointer
(it would be a second commit point that could disagree with the first): the latest checkpoint is the
highest step whose manifest verifies. Readers take no lock; they read each file once, check it against
the manifest and decode those same bytes, so a checkpoint pruned or replaced meanwhile cannot mix in.

Folders from before this layout (config.json, model.safetensors and trainer_state.pt at the top) are
still read (`read_checkpoint`); the first checkpoint written by a resumed run replaces them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
TRAINER_STATE = "trainer_state.pt"
METRICS = "metrics.jsonl"
MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"
LOCK = ".lock"
KEEP = 2  # step directories kept: the latest, and one to fall back to if the latest is damaged
STEP_DIR = re.compile(r"^step-(\d+)$")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked: locked by another writer, not empty, or not writable."""


# ---- atomic files ------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and rename the result to `path`; on failure nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)  # the data must be on disk before the rename makes it visible
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- one writer --------------------------------------------------------------------------------------


class RunLock:
    """`with RunLock(folder):` the caller is the only writer of `folder` until the block ends.

    Creates the folder and writes the lock file first, so an unwritable folder fails here, before any
    work. The lock is `fcntl.flock`: the kernel drops it when its process dies, however it dies, so a
    stale lock needs no detection; the pid and host in the file are only for the message. On entry,
    temporary files an interrupted writer left behind are removed (nobody else can be writing them).
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        make_writable_folder(self.folder)
        path = self.folder / LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunFolderError(
                f"{self.folder} is being written by {holder}; wait for that run to end, or give another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        remove_leftovers(self.folder)
        return self

    def __exit__(self, *exc) -> None:
        # the file stays: unlinking it would let a newcomer lock a fresh inode while a waiter holds the old
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def make_writable_folder(folder: Path) -> None:
    """Create `folder` (and parents); a RunFolderError naming the path if it is a file or not writable."""
    for parent in [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            raise RunFolderError(f"cannot use {folder} as a run folder: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {folder}: {e.strerror or e}") from e
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFolderError(f"cannot write to the run folder {folder}: permission denied")


def remove_leftovers(folder: Path) -> None:
    """Delete temporary files and directories of interrupted writes (call only while holding the lock)."""
    for tmp in [*folder.glob(".*.tmp"), *(folder / CHECKPOINTS).glob(".tmp-*")]:
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink(missing_ok=True)


def run_contents(folder: Path) -> list[str]:
    """What a run folder holds besides its lock file (empty: a fresh run may start there)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK)


def clear_run(folder: Path) -> None:
    """Remove everything in `folder` but the lock (for `overwrite=True`; call while holding the lock)."""
    for name in run_contents(folder):
        path = folder / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


# ---- checkpoints as a unit ---------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """One checkpoint as read: its step (None for a model folder saved outside training), where it lives,
    and the bytes of each file, already checked against the manifest."""

    step: int | None
    path: Path
    files: dict[str, bytes]

    @property
    def config(self) -> dict:
        return parse_config(self.files[CONFIG], self.path / CONFIG)


def publish_checkpoint(folder: str | Path, step: int, files: dict[str, bytes]) -> Path:
    """Write `files` as the checkpoint of `step` in run folder `folder` and publish it atomically.

    Call while holding the RunLock. Returns the published `checkpoints/step-<step>` directory; older
    step directories beyond the last KEEP are removed afterwards.
    """
    root = Path(folder) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            _write_file(tmp / name, data)
        manifest = {"step": step, "files": {name: sha256(data) for name, data in files.items()}}
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=2).encode())  # last: it vouches for the rest
        _fsync(tmp)
        final = root / f"step-{step}"
        if final.exists():  # a step written again (after a fallback); the older checkpoint stays visible
            old = root / f".tmp-old-{step}-{secrets.token_hex(4)}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old)
        else:
            os.rename(tmp, final)  # the commit point
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in step_dirs(folder)[KEEP:]:
        shutil.rmtree(old, ignore_errors=True)  # a reader holding its files open still reads them
    return final


def _write_file(path: Path, data: bytes) -> None:
    # a separate function so that tests can make a write fail between the files of one checkpoint
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def step_dirs(folder: str | Path) -> list[Path]:
    """Published step directories of a run folder, newest first."""
    root = Path(folder) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m[1]), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def read_step_dir(path: Path) -> Checkpoint:
    """Read and verify one step directory; ValueError naming the file that does not match its manifest."""
    manifest = json.loads((path / MANIFEST).read_bytes())
    files = {}
    for name, digest in manifest["files"].items():
        data = (path / name).read_bytes()
        if sha256(data) != digest:
            raise ValueError(f"{path / name} does not match its checksum in {path / MANIFEST}")
        files[name] = data
    return Checkpoint(int(manifest["step"]), path, files)


def latest_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The newest step directory of `folder` that verifies, read; None if there is none.

    A damaged directory is skipped with a warning naming it (the one before is the fallback). A
    directory that vanishes while being read was pruned by the writer: the listing is read again.
    """
    for _ in range(10):
        pruned = False
        for path in step_dirs(folder):
            try:
                return read_step_dir(path)
            except FileNotFoundError:
                if not path.exists():
                    pruned = True
                    break
                warnings.warn(f"skipping incomplete checkpoint {path}: a file is missing", stacklevel=2)
            except (ValueError, KeyError, TypeError) as e:  # bad JSON, bad manifest, checksum mismatch
                if not path.exists():
                    pruned = True
                    break
                warnings.warn(f"skipping damaged checkpoint {path}: {e}", stacklevel=2)
        if not pruned:
            return None
    raise RuntimeError(f"checkpoints in {folder} kept vanishing while being read")


def read_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint a folder holds: the latest verified step directory, else a model folder in the flat
    layout (config.json + model.safetensors at the top, also what runs before step directories wrote).
    None if the folder holds neither."""
    folder = Path(folder)
    found = latest_checkpoint(folder)
    if found is not None or not (folder / WEIGHTS).is_file():
        return found
    files = {
        name: (folder / name).read_bytes()
        for name in (CONFIG, WEIGHTS, TRAINER_STATE)
        if (folder / name).is_file()
    }
    if CONFIG not in files:
        return None
    step = parse_config(files[CONFIG], folder / CONFIG).get("step")
    return Checkpoint(step if isinstance(step, int) else None, folder, files)


def checkpoint_step(folder: str | Path) -> int | None:
    """Step of the latest complete, verified checkpoint in a run folder; None if it has none."""
    found = read_checkpoint(folder)
    return None if found is None else found.step


def run_is_complete(folder: str | Path) -> bool:
    """True when the latest verified checkpoint is the run's last step (its saved `train.steps`)."""
    found = read_checkpoint(folder)
    if found is None or found.step is None:
        return False
    steps = found.config.get("train", {}).get("steps")
    return isinstance(steps, int) and found.step >= steps


def parse_config(data: bytes, path: Path) -> dict:
    try:
        config = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from e
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds {type(config).__name__}, not a JSON object; the checkpoint is corrupt"
        )
    return config


# ---- metrics -----------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines file; a torn or garbled line (a crash mid-write) is skipped with a warning
    naming the file and line."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            warnings.warn(
                f"{path}: skipping line {i}, which is not a complete JSON object: {line[:60]!r}", stacklevel=2
            )
            continue
        rows.append(row)
    return rows


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one line in one write (a crash loses at most that line, which `read_jsonl` then skips)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
