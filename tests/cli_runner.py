"""Run many ``drivemtl`` command lines, each in a process of its own, paying the imports once.

``python tests/cli_runner.py CASES.json RESULTS.json``: CASES is a list of ``{"id", "argv",
"env", "cwd"}``. The runner imports the CLI once, then forks one child per case that runs
exactly what ``python -m drivemtl ARGV`` runs (``drivemtl/__main__.py``), with its own stdout,
stderr, environment and exit status. A fresh interpreter per case would spend most of the test
importing torch and Lightning again.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import tempfile
import time
import traceback

import drivemtl.cli  # noqa: F401
import drivemtl.cli.lightning  # noqa: F401  (torch and Lightning: imported once, shared)

PARALLEL = 2
TIMEOUT_S = 300


def start_case(case: dict) -> tuple[int, object, object]:
    """Fork the child of one case; returns its pid and the files holding its output."""
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed in run_all)
    pid = os.fork()
    if pid == 0:  # the child: become `python -m drivemtl ARGV`
        try:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            os.chdir(case.get("cwd") or os.getcwd())
            os.environ.update(case.get("env") or {})
            sys.argv = ["drivemtl", *case["argv"]]
            runpy.run_module("drivemtl", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:  # an uncaught error prints its traceback: exit status 1
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return pid, out, err


def run_all(cases: list[dict]) -> list[dict]:
    """Every case, ``PARALLEL`` at a time (one thread: forking from threads is unsafe)."""
    results: dict[str, dict] = {}
    waiting = list(cases)
    running: dict[int, tuple[dict, object, object, float]] = {}
    while waiting or running:
        while waiting and len(running) < PARALLEL:
            case = waiting.pop(0)
            pid, out, err = start_case(case)
            running[pid] = (case, out, err, time.monotonic() + TIMEOUT_S)
        for pid, (case, out, err, deadline) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if not done and time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                done, status = os.waitpid(pid, 0)
            if not done:
                continue
            del running[pid]
            out.seek(0)
            err.seek(0)
            results[case["id"]] = {
                "id": case["id"],
                "code": os.waitstatus_to_exitcode(status),
                "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace"),
            }
            out.close()
            err.close()
        time.sleep(0.02)
    return [results[c["id"]] for c in cases]


def main() -> None:
    cases_path, results_path = sys.argv[1:3]
    with open(cases_path) as f:
        cases = json.load(f)
    with open(results_path, "w") as f:
        json.dump(run_all(cases), f)


if __name__ == "__main__":
    main()
