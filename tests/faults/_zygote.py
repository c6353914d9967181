"""A pre-imported process that forks the CLI runs of the fault-injection tests.

Importing the package costs a second or two per process; the kill -9 tests run dozens of
CLI commands, so this process imports it once and forks a child per command (the child is
a whole process: SIGKILL ends it as abruptly as any). Protocol, one JSON object a line on
stdin: ``{"runs": [{"argv": [...], "cwd": "..."}, ...], "kill_after": seconds or null}``;
answer on stdout: ``{"rc": [...], "killed": [...], "wall": seconds}``. A test helper, not
part of the package.
"""

import json
import os
import signal
import sys
import time
import warnings

import bayescannon.cli  # the point of this process: imported once


def _child(argv, cwd) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    os.chdir(cwd)
    try:
        rc = bayescannon.cli.main(argv)
    except BaseException:  # any escape is a failure code for the test
        rc = 99
    os._exit(int(rc or 0))


def main() -> None:
    warnings.simplefilter("ignore", DeprecationWarning)  # fork() in a process with threads
    for line in sys.stdin:
        req = json.loads(line)
        t0 = time.perf_counter()
        pids = []
        for run in req["runs"]:
            pid = os.fork()
            if pid == 0:
                _child(run["argv"], run["cwd"])
            pids.append(pid)
        status, killed = {}, {}
        deadline = None if req.get("kill_after") is None else t0 + float(req["kill_after"])
        while len(status) < len(pids):
            for pid in pids:
                if pid in status:
                    continue
                done, st = os.waitpid(pid, os.WNOHANG)
                if done:
                    status[pid] = st
            if deadline is not None and time.perf_counter() >= deadline:
                for pid in pids:
                    if pid not in status:
                        os.kill(pid, signal.SIGKILL)
                        killed[pid] = True
                deadline = None
            time.sleep(0.002)
        rcs = [os.waitstatus_to_exitcode(status[p]) for p in pids]
        out = {"rc": rcs, "killed": [bool(killed.get(p)) for p in pids], "wall": time.perf_counter() - t0}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
