"""Two searches sharing one study in a real PostgreSQL server (pgserver runs one from its wheel), as
two machines of one kind would through `--storage postgresql://...`: the second joins with
`--resume` while the first runs, leaves the first's running trials to it, and together they build
the study's trials, each counted once, each search ending at its own --trials."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import pytest

from onnxopt.search import study as studies

pgserver = pytest.importorskip("pgserver", reason="pgserver (PostgreSQL in a wheel) is not installed here")
pytest.importorskip("psycopg2")
optuna = pytest.importorskip("optuna")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
TRIALS = 40  # the second search joins while the first has most of its trials left (~0.5 s each)
JOINED_TRIALS = 20  # the second's --trials: the study reaches them long before the first's


@pytest.fixture
def database_url():
    # a short path: the server's Unix socket lives in its data folder (a socket path has ~100 bytes)
    folder = tempfile.mkdtemp(prefix="onnxopt-pg-")
    server = pgserver.get_server(folder, cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def _inputs(tmp_path):
    from onnx import helper

    from onnxopt.testing import conv_node, make_model, random_weights
    c1, i1 = conv_node("x", "a", "c1", 3, 64, seed=0)
    nodes = [c1, helper.make_node("Relu", ["a"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], transB=1)]
    model = make_model(nodes, {**i1, "fc.w": random_weights(2, 10, 64), "fc.b": random_weights(3, 10)},
                       [("x", [1, 3, 16, 16])], [("y", [1, 10])])
    onnx.save(model, tmp_path / "model.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32))
    (tmp_path / "space.yaml").write_text("exact: [cleanup]\nprune: {modes: [off, ratio], ratio: [0.2, 0.6], "
                                         "protect: [0], spread: [0]}\nquantize: {modes: [off]}\n")


def _search(tmp_path, url, trials, *extra):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([sys.executable, "-m", "onnxopt", "search", str(tmp_path / "model.onnx"),
                             "--calib", str(tmp_path / "calib.npz"), "--space", str(tmp_path / "space.yaml"),
                             "--storage", url, "--trials", str(trials), "--workers", "1", "--timing-budget", "0.2",
                             "--max-drop", "0.5", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _study(url):
    names = [s.study_name for s in optuna.get_all_study_summaries(url)]
    return optuna.load_study(study_name=names[0], storage=url) if names else None


def _hold_outside_a_transaction(process, url) -> bool:
    """Stop the search at a moment its connections hold no open transaction: stopped inside one (Optuna
    locks the study's row to number a new trial) it would hold up every other search of the study."""
    import sqlalchemy
    engine = sqlalchemy.create_engine(url)
    busy = sqlalchemy.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND state <> 'idle'")
    try:
        for _ in range(200):
            os.kill(process.pid, signal.SIGSTOP)
            # idle twice, a while apart: a statement it sent just before it stopped has reached the server
            idle = True
            for _ in range(2):
                time.sleep(0.05)
                with engine.connect() as connection:
                    idle = idle and not connection.execute(busy).scalar()
            if idle:
                return True
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
    except BaseException:
        os.kill(process.pid, signal.SIGCONT)
        raise
    finally:
        engine.dispose()
    raise AssertionError("the first search was never seen outside a transaction")


def test_two_searches_share_one_study_in_a_real_database(tmp_path, database_url):
    _inputs(tmp_path)
    first = _search(tmp_path, database_url, TRIALS)
    try:
        deadline = time.monotonic() + 240
        running: list[int] = []
        while time.monotonic() < deadline and first.poll() is None:  # the first has measured a trial
            study = _study(database_url)  # and runs the next
            states = {t.number: t.state.name for t in study.trials} if study else {}
            running = [n for n, state in states.items() if state == "RUNNING"]
            if running and "COMPLETE" in states.values():
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[0]
        # the first is held while the second starts (as a slow machine would be), so that the study has
        # not reached the second's --trials before the second asks its first trial: the second's start-up
        # (imports, its own Ray) takes longer than the first needs for 20 trials on a busy CI machine
        first_driver = next((t.user_attrs.get(studies.DRIVER) for t in _study(database_url).trials
                             if t.state.name == "COMPLETE"), None)
        assert first_driver is not None, "the first search finished no trial in time"
        held = _hold_outside_a_transaction(first, database_url)
        second = _search(tmp_path, database_url, JOINED_TRIALS, "--resume")
        while time.monotonic() < deadline and second.poll() is None and not [
                t for t in _study(database_url).trials if t.state.name == "COMPLETE"
                and "same_as" not in t.user_attrs and t.user_attrs.get(studies.DRIVER) != first_driver]:
            time.sleep(0.2)
        os.kill(first.pid, signal.SIGCONT)
        held = False
        out2, _ = second.communicate(timeout=300)
        # the study's trials count toward the second's --trials, the first's too: it ends once the
        # study has its 20, and does not wait for the first's own 40
        first_outlived_second = first.poll() is None
        built_when_second_ended = studies.done_count(_study(database_url))[0]
        out1, _ = first.communicate(timeout=300)
    finally:
        if locals().get("held"):
            os.kill(first.pid, signal.SIGCONT)
        for p in (first, locals().get("second")):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0 and second.returncode == 0, (out1, out2)
    # and it ended with its --trials finished, not while the last of them still ran in the first
    assert first_outlived_second and JOINED_TRIALS <= built_when_second_ended < TRIALS, (
        built_when_second_ended, out1, out2)
    study = _study(database_url)
    trials = study.trials
    built = [t for t in trials if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs]
    # the first's running trials were its own to finish: none failed as interrupted, none left running
    assert running and not [t for t in trials if t.user_attrs.get("error") == studies.INTERRUPTED]
    assert all(study.trials[n].state.name == "COMPLETE" for n in running)
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # both built trials, the study's --trials between them (the trials one builds count toward the
    # other's --trials; two asking in the same instant may take one more), and both said they were done
    drivers = [t.user_attrs[studies.DRIVER] for t in built]
    assert len(set(drivers)) == 2, {d: drivers.count(d) for d in drivers}
    assert TRIALS <= len(built) <= TRIALS + 1, [t.user_attrs["spec"] for t in built]
    assert [v for k, v in study.user_attrs.items() if k.startswith(f"{studies.DRIVER}:")] == [0.0, 0.0]
    assert "Pareto front" in out1 and "Pareto front" in out2
