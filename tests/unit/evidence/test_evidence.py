"""The evidence readers: memory cgroups (v1 and v2 layouts), the kernel log's OOM lines, /dev/shm, and one real OOM
kill in a real memory-limited cgroup where the machine allows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.evidence import kmsg
from supervisor.evidence.collect import AttemptEvidence, Probes
from supervisor.evidence.memory import cgroup_from_lines, memory_cgroup, tree_memory
from supervisor.evidence.shm import shm_space
from supervisor.oomscore import CHILD_VAR, protect_self, unprotect


def test_a_v1_memory_cgroup_is_found_and_its_oom_count_and_limit_read(tmp_path: Path) -> None:
    folder = tmp_path / "memory" / "slurm" / "job_7"
    folder.mkdir(parents=True)
    (folder / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (folder / "memory.limit_in_bytes").write_text("4294967296\n")
    cg = cgroup_from_lines(["9:name=systemd:/", "4:memory:/slurm/job_7", "0::/"], tmp_path)
    assert cg is not None and cg.path == folder and cg.oom_kills() == 3 and cg.limit_bytes() == 4 << 30
    assert cg.name == "/slurm/job_7"
    (folder / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cg.limit_bytes() is None  # v1's "no limit"


def test_a_v2_memory_cgroup_is_found_and_read(tmp_path: Path) -> None:
    folder = tmp_path / "user.slice" / "train.scope"
    folder.mkdir(parents=True)
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n")
    (folder / "memory.max").write_text("max\n")
    cg = cgroup_from_lines(["0::/user.slice/train.scope"], tmp_path)
    assert cg is not None and cg.oom_kills() == 1 and cg.limit_bytes() is None
    assert cgroup_from_lines(["0::/elsewhere"], tmp_path) is None  # no memory controller there: nothing to read


def test_the_kernels_oom_lines_are_matched_to_the_trees_pids() -> None:
    pids = {100, 101}
    worker = kmsg.parse_kill("Memory cgroup out of memory: Killed process 101 (python) total-vm:4G, anon-rss:3G",
                             pids, main_pid=100)
    assert worker is not None and not worker.main and worker.cgroup and worker.name == "python"
    main = kmsg.parse_kill("Out of memory: Killed process 100 (nnUNetv2_train) total-vm:9G", pids, main_pid=100)
    assert main is not None and main.main and not main.cgroup
    assert kmsg.parse_kill("Out of memory: Killed process 555 (firefox)", pids, 100) is None  # not ours


def test_a_worker_born_and_killed_between_two_samples_is_found_by_its_memory_cgroup() -> None:
    lines = ["oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,oom_memcg=/job/7,"
             "task_memcg=/job/7,task=nnUNetv2_train,pid=428,uid=0",
             "Memory cgroup out of memory: Killed process 428 (nnUNetv2_train) total-vm:5843012kB",
             "oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,mems_allowed=0,global_oom,"
             "task_memcg=/,task=firefox,pid=555,uid=1000",
             "Out of memory: Killed process 555 (firefox) total-vm:1kB"]
    kills = kmsg.kills_in(lines, {100}, 100, "/job/7")
    assert [(k.pid, k.main, k.cgroup) for k in kills] == [(428, False, True)]
    assert kmsg.kills_in(lines, {100}, 100, "/") == ()  # the root cgroup names every process: nothing by it


def test_the_kernel_log_is_read_where_it_may_be() -> None:
    readable, kills = kmsg.oom_kills({os.getpid()}, os.getpid(), kmsg.now_usec())
    if not os.access(kmsg.KMSG, os.R_OK):
        assert readable is False
    assert kills == ()  # this test process was not OOM-killed


def test_shm_and_the_tree_are_measured() -> None:
    space = shm_space()
    if space is not None:
        size, free = space
        assert 0 <= free <= size
    rss, pids = tree_memory(os.getpid())
    assert rss > 0 and os.getpid() in pids
    assert tree_memory(2**22 + 7) == (0, set())  # gone: nothing, no error


def test_a_process_we_start_is_set_back_to_the_score_we_were_started_with(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    me = tmp_path / "self"
    me.mkdir()
    (me / "oom_score_adj").write_text("0\n")
    monkeypatch.delenv(CHILD_VAR, raising=False)
    said = protect_self(proc=me)
    assert (me / "oom_score_adj").read_text() == "-500" and "-> -500" in said
    child = tmp_path / "4242"
    child.mkdir()
    (child / "oom_score_adj").write_text("-500\n")  # inherited
    unprotect(4242, proc_root=tmp_path)
    assert (child / "oom_score_adj").read_text() == "0"


def test_protecting_ourselves_twice_in_one_process_raises_nothing_twice(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # an experiment with experiment.preprocess runs the preprocessing's engine, then its folds, in one process
    me = tmp_path / "self"
    me.mkdir()
    (me / "oom_score_adj").write_text("0\n")
    (me / "oom_score_adj").chmod(0o444)  # as without CAP_SYS_RESOURCE: the children are raised instead
    monkeypatch.delenv(CHILD_VAR, raising=False)
    if os.geteuid() == 0:  # root writes a read-only file: make the write fail as it does in a container
        monkeypatch.setattr(Path, "write_text", lambda *a, **k: (_ for _ in ()).throw(PermissionError()))
    first = protect_self(proc=me)
    assert "raised to 500" in first and os.environ[CHILD_VAR] == "500"
    assert protect_self(proc=me) == first and os.environ[CHILD_VAR] == "500"


def _memory_cgroup_root() -> Path | None:
    cg = memory_cgroup(os.getpid())
    if cg is None or not (cg.path / "memory.limit_in_bytes").exists() or os.geteuid() != 0:
        return None
    return cg.path


@pytest.mark.process
def test_a_real_oom_kill_in_a_memory_limited_cgroup_is_seen_by_count_and_by_the_kernel_log() -> None:
    parent = _memory_cgroup_root()
    if parent is None:
        pytest.skip("needs root and a writable cgroup v1 memory controller")
    folder = parent / f"nnunet-supervise-test-{os.getpid()}"
    try:
        folder.mkdir()
        (folder / "memory.limit_in_bytes").write_text(str(64 << 20))
    except OSError as exc:
        pytest.skip(f"cannot create a memory cgroup here: {exc}")
    try:
        # the child joins the cgroup, then waits for "go" so the evidence is started before it allocates
        child = subprocess.Popen(
            ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && echo in && read go && exec {sys.executable} -c '
                         '"b = bytearray(512 << 20); print(len(b))"'],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline() == b"in\n"  # it is in the cgroup now
        ev = AttemptEvidence.start(child.pid, Probes())
        child.stdin.write(b"go\n")
        child.stdin.close()
        assert child.wait(60) == -9
        found = ev.finish(phase="training", epoch=3)
        assert found.oom_kills == 1 and found.memory_limit_bytes == 64 << 20 and found.memory_cgroup == str(folder)
        if found.kernel_log:
            assert [k.pid for k in found.killed] == [child.pid] and found.killed[0].cgroup
    finally:
        folder.rmdir()
