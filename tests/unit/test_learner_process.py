"""The learner in its own process: the same models as in a thread, a dead process replaced,
no process left behind by a stopped or killed worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream_app.model.learner_host import LearnerHost
from stream_app.model.options import LearnerOptions
from stream_app.model.segmentation import SegmentModel
from stream_app.tools.bench import child_pids
from stream_app.worker.learner_process import LearnerLost, LearnerProcess, LearnerStopped
from tests.conftest import wait_for

OPTIONS = LearnerOptions(features="orders_90d:log1p,app_share_30d", k=3, warmup=30,
                         halflife=0.05, seed=3, sample=500, refine_every=0,
                         rescore_share=0.02, clusterer="kmeans", min_share=0.0)


def samples(n: int, seed: int = 1) -> list[bytes]:
    """Sample messages of three kinds of customer, as the pipeline sends them."""
    rng = np.random.default_rng(seed)
    spec = LearnerHost(OPTIONS).spec
    centres = [(1.0, 0.0), (6.0, 0.5), (20.0, 1.0)]
    out = []
    for i in range(n):
        orders, share = centres[i % 3]
        x = [max(0.0, orders + rng.normal(0, 0.5)), min(1.0, max(0.0, share + rng.normal(0, 0.05)))]
        out.append(orjson.dumps({"spec": spec, "x": x, "member": f"c{i}"}))
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def learner_pids() -> set[int]:
    """This process's learner process, once started."""
    return children_of(os.getpid())


def children_of(parent: int) -> set[int]:
    """Live learner processes whose parent is ``parent`` (not multiprocessing's resource
    tracker)."""
    out = set()
    for pid in child_pids(parent):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        if b"spawn_main" in cmdline and alive(pid):
            out.add(pid)
    return out


def test_the_learner_process_publishes_what_the_learner_in_a_thread_publishes() -> None:
    """Same samples, same options: the same centres and labels in either place."""
    batches = [samples(200, seed=s) for s in (1, 2, 3)]

    async def run(separate: bool) -> list[bytes | None]:
        learner = LearnerProcess(OPTIONS, separate=separate)
        try:
            published = []
            for version, batch in enumerate(batches, 1):
                learned = await learner.learn(batch, None)
                assert learned.learned == len(batch)
                published.append(await learner.snapshot(version, refine_first=False))
            return published
        finally:
            learner.close()

    in_thread, in_process = asyncio.run(run(False)), asyncio.run(run(True))
    assert all(snapshot is not None for snapshot in in_process)
    for a, b in zip(in_thread, in_process):
        ma, mb = SegmentModel.from_json(a), SegmentModel.from_json(b)  # type: ignore[arg-type]
        assert ma.version == mb.version
        np.testing.assert_allclose(ma.centres, mb.centres)
        assert ma.labels == mb.labels


def test_a_dead_learner_process_is_replaced_and_resumes_from_the_snapshot() -> None:
    async def run() -> None:
        learner = LearnerProcess(OPTIONS, separate=True)
        try:
            assert (await learner.learn(samples(200), None)).warmed
            snapshot = await learner.snapshot(1, refine_first=False)
            assert snapshot is not None
            (pid,) = learner_pids()
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(LearnerLost):
                await learner.learn(samples(10), None)
            # A new process, resumed from the snapshot: not warming up again.
            learned = await learner.learn(samples(10, seed=5), snapshot)
            assert learned.learned == 10 and not learned.warmed
            assert pid not in learner_pids() and len(learner_pids()) == 1
            resumed = await learner.snapshot(2, refine_first=False)
            assert SegmentModel.from_json(resumed).samples_seen == 210  # type: ignore[arg-type]
        finally:
            learner.close()

    asyncio.run(run())


def test_a_stopped_learner_takes_no_batch_and_its_process_exits() -> None:
    async def run() -> int:
        learner = LearnerProcess(OPTIONS, separate=True)
        await learner.learn(samples(5), None)
        (pid,) = learner_pids()
        learner.close()
        with pytest.raises(LearnerStopped):
            await learner.learn(samples(5), None)
        with pytest.raises(LearnerStopped):
            await learner.snapshot(1, refine_first=False)
        return pid

    pid = asyncio.run(run())
    wait_for(lambda: not alive(pid), 20, "the learner process to exit")


def test_the_learner_process_leaves_stop_signals_to_its_worker() -> None:
    """``timeout`` or Ctrl-C signal the worker's whole process group: the learner goes on
    until its worker closes it."""
    async def run() -> None:
        learner = LearnerProcess(OPTIONS, separate=True)
        try:
            await learner.learn(samples(5), None)
            (pid,) = learner_pids()
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
            assert (await learner.learn(samples(5, seed=2), None)).learned == 5
            assert learner_pids() == {pid}
        finally:
            learner.close()

    asyncio.run(run())


def test_the_learner_process_exits_when_its_worker_is_killed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A SIGKILLed worker cannot stop its learner: the learner notices and exits."""
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from stream_app.model.options import LearnerOptions
        from stream_app.worker.learner_process import LearnerProcess

        async def main():
            learner = LearnerProcess(LearnerOptions(**{OPTIONS.__dict__!r}), separate=True)
            await learner.learn([], None)
            print("learning", flush=True)
            time.sleep(600)

        if __name__ == "__main__":  # not in the learner process, which imports this
            asyncio.run(main())
    """))
    worker = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline() == "learning\n"  # type: ignore[union-attr]
        (learner,) = children_of(worker.pid)
    finally:
        worker.kill()
        worker.wait()
    wait_for(lambda: not alive(learner), 20, "the learner process to exit")
