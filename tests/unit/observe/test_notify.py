"""Notifications through apprise to a real local HTTP endpoint (apprise's json://), and a dead one that must not
disturb supervision."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from supervisor.daemon.runner import Runner
from supervisor.observe.notify import Notifications
from tests.conftest import fake_spawn, make_ctx


class Inbox:
    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        inbox = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                inbox.posts.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: nothing listens there


@pytest.mark.process
def test_give_up_and_repeated_failures_reach_a_real_endpoint_and_a_dead_one_changes_nothing(tmp_path: Path) -> None:
    inbox = Inbox()
    ctx = make_ctx(tmp_path, [{"epochs": [0, 0], "outcome": "1"}] * 3,
                   notify={"urls": [f"json://127.0.0.1:{dead_port()}/", f"json://127.0.0.1:{inbox.port}/"]})
    assert Runner(ctx, spawn=fake_spawn, tick_s=0.05, leftover_grace_s=1.0).run() == 1  # gave up, as without
    titles = [p["title"] for p in inbox.posts]
    assert [t.rsplit(": ", 1)[1] for t in titles] == ["repeated_failures", "give_up"]
    assert "3 failures in a row" in inbox.posts[0]["message"] and "no_progress" in inbox.posts[1]["message"]
    assert str(ctx.layout.fold_dir) in inbox.posts[1]["message"]


def test_a_sender_that_raises_is_logged_not_raised() -> None:
    def broken(title: str, body: str) -> bool:
        raise RuntimeError("smtp down")

    n = Notifications("run", [], ["finished"], sender=broken)
    n.on_event("finished", {"epochs": 10})
    n.close()  # delivered (and failed) in the background; nothing propagates
    sent: list[str] = []
    only = Notifications("run", [], ["give_up"], sender=lambda t, b: bool(sent.append(t)) or True)
    only.on_event("finished", {"epochs": 10})  # not asked for
    only.on_event("stall", {"attempt": 1, "message": "hung"})
    only.close()
    assert sent == []


def test_a_finished_prediction_says_cases_not_epochs() -> None:
    sent: list[tuple[str, str]] = []
    n = Notifications("/out", [], ["finished"], sender=lambda t, b: sent.append((t, b)) is None)
    n.finished_words = lambda count: f"prediction finished: {count} case(s) predicted"
    n.on_event("finished", {"epochs": 12})
    n.close()
    assert sent and sent[0][1].endswith("prediction finished: 12 case(s) predicted")
