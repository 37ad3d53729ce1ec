"""A stop (SIGINT/SIGTERM) that Python or a library drops on the way still stops recsys-train before it publishes,
with no traceback. A full run's suite once saw it: the signal handler's ``Interrupted`` raised inside a
``__del__`` of TensorFlow's garbage collection, where Python can only drop it and print "Exception ignored ...
Traceback" (test_training_signals asserts there is no traceback)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from model_registry import Registry
from model_registry.registry import STAGING_PREFIX
from tests.unit.test_train_cli_outputs import TINY
from trainer import cli, interrupts, pipeline
from trainer.export import publish

DROPPED = """
import signal
from trainer import cli, interrupts

cli._stop_on_signals(interrupts.StopReport(str))

class Collected:
    def __del__(self):  # as TensorFlow's ConcreteFunctionGarbageCollector runs when the signal lands there
        raise interrupts.request(signal.SIGTERM)

Collected()
try:
    interrupts.check()
except interrupts.Interrupted as e:
    print("kept", e.signum)
"""


def test_a_stop_dropped_in_a_del_prints_no_traceback_and_is_kept():
    run = subprocess.run([sys.executable, "-c", DROPPED], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == f"kept {int(signal.SIGTERM)}"
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr[-3000:]


def _run_stopped_in(tmp_path, monkeypatch, module, name: str, stop) -> int:
    """The exit status of a TINY ``recsys-train`` run in which ``module.name``, when called, first does ``stop``
    (SIGTERM) and then its work."""
    original = getattr(module, name)

    def stopped(*args, **kwargs):
        stop(signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, stopped)
    try:
        return cli.main([*TINY, "--registry", str(tmp_path / "reg")])
    finally:
        interrupts.clear()


def test_a_stop_a_library_swallowed_after_the_search_publishes_nothing(tmp_path, monkeypatch):
    # Recorded by the handler, its exception lost in a library.
    status = _run_stopped_in(tmp_path, monkeypatch, pipeline, "customer_store", interrupts.request)
    assert status == 128 + signal.SIGTERM
    assert Registry(tmp_path / "reg", "m").versions() == []


def test_a_stop_while_the_version_is_written_publishes_nothing(tmp_path, monkeypatch):
    """Deferred while TensorFlow saves the towers, a stop used to let the publish finish: the run said it was
    interrupted, and a version was published all the same."""
    # What the handler does, inside the run's deferred block.
    status = _run_stopped_in(tmp_path, monkeypatch, publish.mf, "write_popular", interrupts.stop)
    assert status == 128 + signal.SIGTERM
    assert Registry(tmp_path / "reg", "m").versions() == []
    assert not list((tmp_path / "reg" / "m").glob(STAGING_PREFIX + "*")), "the staging folder is removed"


PRINTED_BY_A_LIBRARY = """
import signal
import sys
from trainer import cli, interrupts

cli._stop_on_signals(interrupts.StopReport(str))
interrupts.request(signal.SIGINT)  # recorded by the handler, whose exception a library turned into its own error


def imported():
    raise SystemError("<built-in function __import__> returned a result with an exception set")


for error in (SystemError, ValueError):
    try:
        imported() if error is SystemError else int("x")
    except error as e:
        caught = e
    sys.excepthook(type(caught), caught, caught.__traceback__)  # what PyErr_Print does, in a library's C++
print("went on")
"""


def test_an_error_a_library_prints_while_a_stop_is_recorded_is_one_line_not_a_traceback():
    """The full suite once saw test_training_signals' Ctrl-C land in an import TensorFlow's C++ made: it printed the
    SystemError's traceback itself (through sys.excepthook) before the run stopped as asked."""
    run = subprocess.run([sys.executable, "-c", PRINTED_BY_A_LIBRARY], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "went on", run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-2:] == [
        "(while stopping) SystemError: <built-in function __import__> returned a result with an exception set",
        "(while stopping) ValueError: invalid literal for int() with base 10: 'x'"]


UNRAISABLE_BY_A_LIBRARY = """
import signal
from trainer import cli, interrupts

cli._stop_on_signals(interrupts.StopReport(str))


class Collected:
    def __init__(self, error):
        self.error = error

    def __del__(self):  # where C++ that cannot raise hands the error to sys.unraisablehook, as TensorFlow's did
        try:
            raise interrupts.request(signal.SIGINT)
        except interrupts.Interrupted as stop:
            if self.error is SystemError:
                raise SystemError("<built-in function __import__> returned a result with an exception set") from stop
        raise self.error("not the stop's")


Collected(SystemError)
Collected(ValueError)
print("went on")
"""


def test_an_error_a_library_could_not_raise_while_a_stop_is_recorded_is_one_line_not_a_traceback():
    """CI saw it at stop 56: the Ctrl-C landed in TensorFlow's nest flattening, whose C++ handed the SystemError
    made of it to ``sys.unraisablehook``, which printed its traceback (without an "Exception ignored" line)."""
    run = subprocess.run([sys.executable, "-c", UNRAISABLE_BY_A_LIBRARY], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "went on", run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr[-3000:]
    assert run.stderr.splitlines()[-1:] == ["(while stopping) ValueError: not the stop's"], run.stderr[-3000:]


STUCK = """
import signal
import sys
import threading
from trainer import interrupts

report = interrupts.StopReport(lambda: "recsys-train: interrupted; nothing was published", grace_s=0.5)
signal.signal(signal.SIGTERM, lambda signum, frame: report.arm(signum))  # the stop reaches no loop of the run
print("ready", flush=True)
threading.Event().wait(30)  # as a collective whose peer is gone waits
print("still up", flush=True)
"""


def test_a_worker_the_stop_cannot_reach_ends_itself_after_its_grace():
    """A launcher killed outright leaves its workers only the kernel's SIGTERM; one waiting in a collective whose
    peer was gone stayed up (the handler's ``Interrupted`` never reached it), and nothing killed it later."""
    proc = subprocess.Popen([sys.executable, "-c", STUCK], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(10)
        out, err = proc.communicate()
    finally:
        proc.kill()
    assert status == 128 + signal.SIGTERM and "still up" not in out
    assert err.strip() == ("recsys-train: interrupted; nothing was published (still running 0.5 s after the stop: a "
                           "collective that never returns, or a step that outlasts the grace)")


IN_A_LONG_STEP = """
import sys
import threading
from trainer import cli, interrupts

grace_s = float(sys.argv[1]) if len(sys.argv) > 1 else None
cli._stop_on_signals(interrupts.StopReport(lambda: "recsys-train: interrupted; nothing was published", grace_s))
with interrupts.deferred():  # as the evaluation, or the publish's index build, runs in TensorFlow
    print("ready", flush=True)
    threading.Event().wait(30)
print("still up", flush=True)
"""


def _signalled_twice(*argv: str, wait_s: float = 10) -> tuple[int | None, str]:
    """(exit status, stderr) of IN_A_LONG_STEP given SIGINT twice, 0.5 s apart; None: still running ``wait_s``
    on."""
    proc = subprocess.Popen([sys.executable, "-c", IN_A_LONG_STEP, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.5)  # the first waits for the step's end
        proc.send_signal(signal.SIGINT)
        try:
            status = proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            status = None
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert "still up" not in out
    return status, err.strip()


def test_a_second_signal_ends_a_single_process_at_once():
    """A stop waits for the TensorFlow step under way, a minute or more at a million interactions; a second Ctrl-C
    was ignored, so only SIGKILL (and no line saying what was published) could end the run before that."""
    assert _signalled_twice() == (130, "recsys-train: interrupted; nothing was published (a second SIGINT: ended "
                                       "at once, in the step under way)")


def test_a_multi_worker_worker_ignores_a_second_signal():
    """A terminal's Ctrl-C reaches a --workers launcher, which passes it on, and its workers: each worker sees two.
    The second does not break off the first's cleanup; the watchdog bounds the wait."""
    assert _signalled_twice("30", wait_s=2) == (None, "")


def test_the_line_is_printed_once_whoever_prints_it_first(capsys):
    report = interrupts.StopReport(lambda: "recsys-train: interrupted; nothing was published")
    report.arm(signal.SIGINT)  # no watchdog without a grace
    report.print()
    report.print(" (again)")
    assert capsys.readouterr().err == "recsys-train: interrupted; nothing was published\n"


MID_TRAINING = """
import os
import signal
import sys
import threading
import traceback
from tests.unit.test_train_cli_outputs import TINY
from trainer import cli, interrupts, pipeline, training

fit = training._fit


def fit_until_stopped(model, ds, epochs):
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()  # lands while Keras trains
    return fit(model, ds, 10_000)


training._fit = fit_until_stopped
parser = cli.build_parser()
config = cli.config_from_args(parser, parser.parse_args([*TINY, "--registry", sys.argv[1]]))
cli._stop_on_signals(interrupts.StopReport(str))
try:
    pipeline.run(config)
except interrupts.Interrupted as stop:
    print("raised in", " < ".join(frame.name for frame in traceback.extract_tb(stop.__traceback__)[-2:][::-1]))
"""


def test_a_stop_while_keras_trains_is_raised_at_a_batch_end_not_inside_tensorflow(tmp_path):
    """CI at stop 58: a worker of a 2-worker run stopped by its launcher's death aborted inside TensorFlow's C++
    ("Check failed: !PyErr_Occurred()", in its scalar cache) when the handler's exception appeared there, and never
    said that nothing was published. The handler now records the stop while TensorFlow runs, and a Keras callback
    raises it at the batch's end: the exception comes from ``interrupts.check`` in the callback, not from the
    handler (nor a check an epoch or a run later)."""
    run = subprocess.run([sys.executable, "-c", MID_TRAINING, str(tmp_path / "reg")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "raised in check < on_train_batch_end", run.stderr[-3000:]
    assert Registry(tmp_path / "reg", "m").versions() == []


def test_outside_a_deferred_block_a_stop_is_raised_at_once_and_inside_at_its_end():
    reached = []
    try:
        with pytest.raises(interrupts.Interrupted):
            interrupts.stop(signal.SIGTERM)  # loading the data, the baselines: no TensorFlow in this thread
            reached.append("after the stop, outside")
        interrupts.clear()
        with pytest.raises(interrupts.Interrupted) as stopped:
            with interrupts.deferred():
                interrupts.stop(signal.SIGINT)
                reached.append("after the stop, inside")
        assert stopped.value.signum == signal.SIGINT
        assert reached == ["after the stop, inside"]
        interrupts.clear()
        with pytest.raises(interrupts.Interrupted) as stopped:
            with interrupts.deferred():
                interrupts.stop(signal.SIGTERM)
                raise FloatingPointError("a peer that took the stop first left the collective")
        assert isinstance(stopped.value.__cause__, FloatingPointError)  # the stop is what the run reports
        interrupts.clear()
        with interrupts.deferred():
            pass  # no stop since the last clear: nothing to raise
    finally:
        interrupts.clear()
