"""Checkpoints that survive the disk: written next to their destination and renamed, so a
full disk, a killed process or a slow network file system never leaves a partial file where a
good checkpoint was; and read back before a resume, falling back to an older one that loads."""

from __future__ import annotations

import os
import pickle
import secrets
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, saving through a temporary file in the checkpoint's own
    folder (Lightning's own goes through $TMPDIR, a copy when the run folder is on another
    file system) and renaming it over the destination only once it is complete."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_atomically(checkpoint, Path(path))


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path`, which holds either its old content or the new, never a part:
    a failure (a full disk) removes the temporary file and raises."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = error.__cause__ or error.__context__
        if isinstance(error, RuntimeError) and isinstance(cause, OSError):
            # torch's zip writer reports a failed write (a full disk) as a RuntimeError
            raise OSError(cause.errno, f"{cause.strerror}: saving {path}") from error
        raise


class UnsafeCheckpoint(ValueError):
    """A checkpoint that holds objects other than tensors (code, say): never loaded, never
    silently passed over either."""


def load_failure(path: Path, error: Exception) -> str:
    """One line saying why torch could not load `path`: a file that is no complete zip archive
    (every checkpoint torch writes is one) is called truncated or another kind of file, else
    the first sentence of torch's message, never cut mid-word."""
    if path.is_file() and not zipfile.is_zipfile(path):
        size = path.stat().st_size
        return (
            f"{size:,} bytes, not a complete torch checkpoint (truncated, or another kind of file)"
        )
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return f"{type(error).__name__}{': ' + text if text else ''}"


def unreadable_reason(path: Path) -> str | None:
    """Why `path` cannot be resumed from (it does not load as a Lightning checkpoint), or
    None when it can; UnsafeCheckpoint for a file holding objects other than tensors."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "weights_only" in str(error) or "Weights only load failed" in str(error):
            raise UnsafeCheckpoint(
                f"{path} holds objects other than tensors and is not loaded (normlab loads "
                "checkpoints with weights_only=True); remove it, or give resume=false"
            ) from None
        return load_failure(path, error)
    except Exception as error:  # truncated, empty, not a torch file
        return load_failure(path, error)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        return "no state_dict in it"
    return None
