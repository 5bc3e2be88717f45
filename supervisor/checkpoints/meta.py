"""Read an nnU-Net checkpoint's small fields (epoch, trainer name) without torch and without running its pickle.

torch.save writes a zip whose `*/data.pkl` holds the object tree; tensors are references to other zip
members. We unpickle data.pkl with an Unpickler whose find_class never returns a real callable: every
global becomes an inert placeholder, so a hostile pickle cannot execute anything, and we never read the
tensor payloads, so this costs a few milliseconds even for a large checkpoint.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.errors import SupervisorError
from supervisor.fileread import check_regular


class CheckpointError(SupervisorError):
    """A checkpoint file cannot be read."""


class _Inert:
    """Stands in for any global the pickle names; accepts whatever it is given and does nothing."""

    _qualname = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # Container opcodes (SETITEMS, APPENDS) and REDUCE on a placeholder, e.g. a defaultdict or a list
    # subclass in a trainer's logging: absorb them so that a benign checkpoint still reads.
    def __call__(self, *args: Any, **kwargs: Any) -> _Inert:
        return _Inert(*args)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{self._qualname}>"


class _Mapping(dict):  # type: ignore[type-arg]
    """OrderedDict stand-in; a subclass so that BUILD can attach torch's `_metadata` attribute."""


class InertUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file)
        self.storage_keys: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return _Mapping
        return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})

    def persistent_load(self, pid: Any) -> Any:
        # torch: ("storage", storage_type, key, location, numel); the key names the member data/<key>
        if isinstance(pid, tuple) and len(pid) > 2 and pid[0] == "storage":
            self.storage_keys.append(str(pid[2]))
        return ("storage", pid)


@dataclass(frozen=True)
class CheckpointMeta:
    """The few fields the daemon needs from a checkpoint."""

    path: Path
    current_epoch: int | None
    trainer_name: str | None
    size: int


def data_pickle_name(zf: zipfile.ZipFile) -> str:
    names = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not names:
        raise CheckpointError("no data.pkl member: not a torch zip checkpoint")
    return names[0]


def read_meta(path: Path) -> CheckpointMeta:
    """Epoch and trainer name of a checkpoint, read without torch; raises CheckpointError with the reason."""
    try:
        check_regular(path, "checkpoint file")  # a FIFO would block the reader
        size = path.stat().st_size
        if size == 0:
            raise CheckpointError("file is empty (0 bytes)")
        with zipfile.ZipFile(path) as zf:
            obj = InertUnpickler(io.BytesIO(zf.read(data_pickle_name(zf)))).load()
    except CheckpointError:
        raise
    except Exception as exc:  # placeholders make odd pickles fail in odd ways; all mean "unreadable"
        raise CheckpointError(f"{type(exc).__name__}: {exc}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"top-level object is {type(obj).__name__}, not a dict")
    epoch = obj.get("current_epoch")
    name = obj.get("trainer_name")
    return CheckpointMeta(
        path=path,
        current_epoch=epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None,
        trainer_name=name if isinstance(name, str) else None,
        size=size,
    )


def resume_point(candidates: list[Path]) -> CheckpointMeta | None:
    """The checkpoint nnU-Net's --c will load (the first readable of final, latest, best), or None."""
    for path in candidates:
        try:
            return read_meta(path)
        except CheckpointError:
            continue
    return None
