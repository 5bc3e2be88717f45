"""Wake the supervisor the moment files change in the fold folder, instead of at its next poll."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


class FileActivity:
    """A watchdog observer that calls `notify` (which enqueues a wake-up) when files change under the folders.

    Coalesced: at most one wake per `min_interval_s`, so a chatty validation phase does not flood the queue.
    The supervisor still polls on its tick, so a file system without inotify (some NFS) only delays things.
    """

    def __init__(self, folders: list[Path], notify: Callable[[], None],
                 ignore: Callable[[str], bool] = lambda path: False, min_interval_s: float = 0.5) -> None:
        self._folders, self._notify, self._min = folders, notify, min_interval_s
        self._ignore = ignore
        self._last = 0.0
        self._observer: object | None = None

    def start(self) -> None:
        from watchdog.events import (
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )
        from watchdog.observers import Observer

        outer = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if outer._ignore(str(event.src_path)):
                    return
                now = time.monotonic()
                if now - outer._last >= outer._min:  # only this observer thread touches _last
                    outer._last = now
                    outer._notify()

        observer = Observer()
        for folder in self._folders:
            folder.mkdir(parents=True, exist_ok=True)
            # Closes, not every write: nnU-Net opens, appends and closes its log per line, and torch.save's
            # thousands of writes per checkpoint would each wake the observer thread (the kernel filters them).
            observer.schedule(Handler(), str(folder), recursive=True,
                              event_filter=[FileClosedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent])
        observer.daemon = True
        observer.start()
        self._observer = observer

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()  # type: ignore[attr-defined]
            observer.join(timeout=5)  # type: ignore[attr-defined]
