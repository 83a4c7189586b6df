"""`python -m monai.bundle ARGS` many times without paying the imports each time.

A server process imports torch, MONAI and the bundle once (it runs nothing else, so forking it is
safe: no OpenMP pool exists yet), then forks a child per command. The child points its stdout and
stderr at files, and runs `monai.bundle`'s `__main__` exactly as `python -m monai.bundle` does,
including Python's top-level handling of an uncaught exception (`sys.excepthook`, exit code 1).
A command can ask for a limit on file sizes (RLIMIT_FSIZE: writes beyond it fail with EFBIG, as on
a full disk) or for a fake free-space figure (`shutil.disk_usage`).

    cli = ForkedCLI(); res = cli.run(["run", "--config_file", ...]); res.returncode, res.stderr
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _child(request: dict) -> None:
    import runpy
    import shutil
    import signal

    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", closefd=False)
    os.chdir(request.get("cwd") or ROOT)
    if request.get("fsize_limit"):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize_limit"], request["fsize_limit"]))
    if request.get("free_bytes") is not None:
        free = int(request["free_bytes"])
        real = shutil.disk_usage
        shutil.disk_usage = lambda p: real(p)._replace(free=free)  # type: ignore[assignment]
    sys.argv = ["monai.bundle", *request["argv"]]
    code = 0
    try:
        runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve() -> None:
    import fire  # noqa: F401
    import monai.bundle  # noqa: F401
    import torch  # noqa: F401

    import bundle  # noqa: F401

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("wait"):  # the exit code of a child started with "detach"
            _, status = os.waitpid(int(request["wait"]), 0)
            print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            _child(request)
        if request.get("detach"):  # answer at once: the caller may kill it, then asks for its exit code
            print(json.dumps({"pid": pid}), flush=True)
            continue
        _, status = os.waitpid(pid, 0)
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc}), flush=True)


class ForkedCLI:
    def __init__(self, env: dict | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-u", __file__], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.tmp = tempfile.mkdtemp(prefix="forked-cli-")

    def run(self, argv: list[str], fsize_limit: int | None = None, free_bytes: int | None = None) -> Result:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out, err = os.path.join(self.tmp, "stdout"), os.path.join(self.tmp, "stderr")
        request = {"argv": [str(a) for a in argv], "stdout": out, "stderr": err, "fsize_limit": fsize_limit,
                   "free_bytes": free_bytes}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())["rc"]
        return Result(rc, Path(out).read_text(), Path(err).read_text())

    def start(self, argv: list[str], stdout: str, stderr: str) -> int:
        """Start a command without waiting (its output into the two files); returns its pid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"argv": [str(a) for a in argv], "stdout": stdout, "stderr": stderr, "detach": True}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["pid"])

    def wait(self, pid: int) -> int:
        """The exit code of a started command (negative: killed by that signal)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"wait": pid}) + "\n")
        self.proc.stdin.flush()
        return int(json.loads(self.proc.stdout.readline())["rc"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


if __name__ == "__main__":
    serve()
