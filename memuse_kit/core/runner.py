"""One way to run external commands: printed in dry runs, streamed and logged otherwise."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterable, List, Optional, Sequence, TextIO, Union

from memuse_kit.core.errors import KitError
from memuse_kit.core.output import detail, report

LineSink = Callable[[str], None]


class CommandTimeout(KitError):
    """A streamed command ran over its time and was killed."""


def format_command(
    cmd: Sequence[str], cwd: Optional[Path] = None, env: Optional[Dict[str, str]] = None
) -> str:
    parts = []
    if cwd is not None:
        parts.append(f"cd {shlex.quote(str(cwd))} &&")
    if env:
        parts.extend(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    parts.append(shlex.join(list(cmd)))
    return " ".join(parts)


class Runner:
    """Runs commands, or with dry_run only prints them (the exact line a user could paste)."""

    def __init__(self, dry_run: bool = False, out: Optional[TextIO] = None) -> None:
        self.dry_run = dry_run
        self.out = out
        self.history: List[str] = []

    def _announce(self, line: str) -> None:
        self.history.append(line)
        if self.dry_run:
            report(line, self.out)
        else:
            detail(f"$ {line}")

    def run(
        self,
        cmd: Sequence[str],
        *,
        cwd: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        check: bool = True,
        mutates: bool = True,
        input: Optional[str] = None,
        stdin: Optional[IO[Any]] = None,
        timeout: Optional[float] = None,
        interactive: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run and capture output. Commands with mutates=False also run in dry runs.

        input (text) or stdin (an open file) feed the command; otherwise it reads nothing.
        interactive commands share the terminal (sudo asking for a password) and are not
        captured. Over its timeout the command is killed and CommandTimeout raised.
        """
        self._announce(format_command(cmd, cwd, env))
        if self.dry_run and mutates:
            return subprocess.CompletedProcess(list(cmd), 0, "", "")
        feed = Feed(input, stdin, interactive)
        result = _run_captured(cmd, cwd, env, feed, timeout)
        if check and result.returncode != 0:
            raise KitError(_failure_line(cmd, result.returncode, result.stderr or result.stdout))
        return result

    def start(
        self,
        cmd: Sequence[str],
        *,
        stdout: Union[int, IO[Any]] = subprocess.DEVNULL,
        stderr: Union[int, IO[Any], None] = subprocess.STDOUT,
    ) -> subprocess.Popen:
        """Start a command in the background (QEMU, a tar feeding a pipe); the caller waits."""
        self._announce(format_command(cmd))
        if self.dry_run:
            raise KitError(f"{cmd[0]} cannot start in a dry run")
        try:
            return subprocess.Popen(
                list(cmd), stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr
            )
        except OSError as error:
            raise KitError(f"cannot run {cmd[0]}: {error.strerror}") from None

    def stream(
        self,
        cmd: Sequence[str],
        *,
        cwd: Optional[Path] = None,
        env: Optional[Dict[str, str]] = None,
        sinks: Iterable[LineSink] = (),
        log: Optional[TextIO] = None,
        timeout: Optional[float] = None,
    ) -> int:
        """Run with stdout+stderr merged, each line to the sinks and the log; returns status.

        With a timeout the command is killed when it runs over, and CommandTimeout raised.
        """
        self._announce(format_command(cmd, cwd, env))
        if self.dry_run:
            return 0
        if log is not None:
            log.write(f"$ {format_command(cmd, cwd, env)}\n")
            log.flush()
        sink_list = list(sinks)
        try:
            process = subprocess.Popen(
                list(cmd),
                cwd=cwd,
                env=_merged_env(env),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                # its own process group, so a timeout or Ctrl-C stops what it started too
                # (vng's QEMU kept the output open after vng was killed)
                start_new_session=True,
            )
        except OSError as error:
            raise KitError(f"cannot run {cmd[0]}: {error.strerror}") from None
        assert process.stdout is not None
        expired = threading.Event()

        def stop() -> None:
            expired.set()
            _kill_group(process)

        timer = threading.Timer(timeout or 0, stop)
        if timeout:
            timer.start()
        try:
            for line in process.stdout:
                if log is not None:
                    log.write(line)
                for sink in sink_list:
                    sink(line)
        except BaseException:
            _kill_group(process)
            process.wait()
            raise
        finally:
            timer.cancel()
        status = process.wait()
        if expired.is_set():
            raise CommandTimeout(f"{cmd[0]} ran over {timeout:.0f}s and was stopped")
        return status


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the command and every process it started in its group."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


def _merged_env(env: Optional[Dict[str, str]]) -> Optional[Dict[str, str]]:
    if not env:
        return None
    merged = dict(os.environ)
    merged.update(env)
    return merged


@dataclass(frozen=True)
class Feed:
    """What a captured command reads: text, an open file, the terminal, or nothing."""

    text: Optional[str] = None
    file: Optional[IO[Any]] = None
    interactive: bool = False

    def stdin(self) -> Union[int, IO[Any], None]:
        if self.interactive:
            return None
        if self.file is not None:
            return self.file
        return None if self.text is not None else subprocess.DEVNULL


def _run_captured(
    cmd: Sequence[str],
    cwd: Optional[Path],
    env: Optional[Dict[str, str]],
    feed: Feed = Feed(),
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            list(cmd),
            cwd=cwd,
            env=_merged_env(env),
            capture_output=not feed.interactive,
            text=True,
            errors="replace",
            input=feed.text,
            stdin=feed.stdin(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"{cmd[0]} ran over {timeout:.0f}s and was stopped") from None
    except OSError as error:
        raise KitError(f"cannot run {cmd[0]}: {error.strerror}") from None


def _failure_line(cmd: Sequence[str], status: int, output: str) -> str:
    last = next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    detail = f": {last}" if last else ""
    return f"{shlex.join(list(cmd))[:200]} failed with status {status}{detail}"
