"""Python children forked from a process that has already imported torch and moeckpt.

The kill and Ctrl-C tests start dozens of `python -c CODE` children, and each one used to spend
about 2 CPU-seconds importing torch before its first line: a third of the fast tier's pytest
time. Here one forkserver per pytest worker imports them once and forks a child per call. A child
is still a process of its own (its own pid, signals, locks, descriptors, exit status), with the
default SIGINT handler, its argv set as `python -c CODE ARG...` would, stdout to a pipe the parent
reads and stderr kept for the assertion messages.

It inherits the forkserver's environment and working directory, not the caller's. `env` sets
variables in the child before its code runs: enough for those read when first needed (MOECKPT_ISA,
read at the first kernel call), not for those read as torch or moeckpt is imported."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile

_context = None


def _forkserver():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["torch", "moeckpt", "safetensors.torch"])
    return _context


def _child_main(code: str, argv: list[str], env: dict, out, err_path: str) -> None:
    os.environ.update(env)
    os.dup2(out.fileno(), 1)
    out.close()
    fd = os.open(err_path, os.O_WRONLY | os.O_TRUNC)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv = ["-c", *argv]
    try:
        exec(compile(code, "<child>", "exec"), {"__name__": "__main__"})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Child:
    """The part of subprocess.Popen the tests use: stdout (text), poll, wait, kill, send_signal,
    returncode, plus stderr_text() once it has exited."""

    def __init__(self, code: str, *argv, env: dict | None = None):
        ctx = _forkserver()
        fd, self._err_path = tempfile.mkstemp(prefix="moeckpt-child-stderr-")
        os.close(fd)
        r, w = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_child_main, args=(code, [str(a) for a in argv], dict(env or {}), w, self._err_path))
        self._proc.start()
        self._exitcode = None
        w.close()
        self.pid = self._proc.pid
        self.stdout = os.fdopen(os.dup(r.fileno()), "r")
        r.close()

    @property
    def returncode(self):
        return self.poll()

    def poll(self):
        if self._exitcode is None:
            self._exitcode = self._proc.exitcode
        return self._exitcode

    def wait(self, timeout=None):
        if self._exitcode is None:
            self._proc.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(["python", "-c", "..."], timeout)
        return self._exitcode

    def kill(self):
        self._proc.kill()

    def send_signal(self, sig):
        os.kill(self._proc.pid, sig)

    def stderr_text(self) -> str:
        with open(self._err_path) as f:
            return f.read()

    def close(self):
        self.stdout.close()
        if self.poll() is not None:
            self._proc.close()
        os.unlink(self._err_path)


def run(code: str, *argv, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)`."""
    c = Child(code, *argv, env=env)
    try:
        out = c.stdout.read()
        rc = c.wait(timeout)
        return subprocess.CompletedProcess(["python", "-c", "...", *map(str, argv)], rc, out, c.stderr_text())
    finally:
        if c.poll() is None:
            c.kill()
            c.wait()
        c.close()
