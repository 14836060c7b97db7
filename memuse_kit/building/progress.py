"""Progress of a kernel build: a bar on a terminal, a plain line every so often otherwise."""

from __future__ import annotations

import re
import sys
import time
from typing import TYPE_CHECKING, Callable, Optional, TextIO, Tuple

from memuse_kit.core import output

if TYPE_CHECKING:  # loaded for a terminal's bar only: a build in a pipe never draws one
    from tqdm import tqdm

# kbuild's quiet output: "  CC      kernel/sys.o", "  LD [M]  fs/foo.ko", ...
_STEP = re.compile(r"^\s{2}(CC|AS|CC \[M\]|AS \[M\])\s+\S+\.o\s*$")
# the first step of linking the kernel: "  AR      vmlinux.a" (6.1+), "  LD      vmlinux.o"
_LINK = re.compile(r"^\s{2}(AR|LD)\s+vmlinux\.[ao]\s*$")
_ERROR = re.compile(
    r"(error:|Error \d+|\*\*\*|undefined reference|No rule to make target|Unmet build dependencies)"
)


def is_compile_step(line: str) -> bool:
    return bool(_STEP.match(line.rstrip("\n")))


def is_error_line(line: str) -> bool:
    return bool(_ERROR.search(line))


class BuildProgress:
    """Counts compile steps against an estimate; call feed() with each output line."""

    def __init__(
        self,
        label: str,
        estimate: int,
        out: TextIO = sys.stderr,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.estimate = max(estimate, 1)
        self.out = out
        self.interval = interval
        self.clock = clock
        self.started = clock()
        self.last_report = self.started
        self.steps = 0
        self.errors: list = []
        self.link_started: Optional[float] = None
        self.finished: Optional[float] = None
        self.bar: Optional[tqdm] = None
        if out.isatty() and output.verbosity() >= output.Verbosity.NORMAL:
            from tqdm import tqdm

            self.bar = tqdm(total=self.estimate, desc=label, unit="obj", file=out, leave=False)

    def percent(self) -> int:
        # the estimate can be short; never claim 100% before make has finished
        return min(99, self.steps * 100 // self.estimate)

    def feed(self, line: str) -> None:
        if is_error_line(line) and len(self.errors) < 20:
            self.errors.append(line.rstrip("\n"))
        if self.link_started is None and _LINK.match(line.rstrip("\n")):
            self.link_started = self.clock()
        if not is_compile_step(line):
            return
        self.steps += 1
        if self.bar is not None:
            if self.bar.n < self.estimate - 1:
                self.bar.update(1)
            self.bar.set_postfix_str(line.split()[-1][-40:], refresh=False)
            return
        now = self.clock()
        if now - self.last_report >= self.interval:
            self.last_report = now
            self._line(f"{self.percent()}% ({self.steps} objects{self._pace()})")

    def rate(self) -> float:
        """Objects per second since make started."""
        elapsed = self.clock() - self.started
        return self.steps / elapsed if elapsed > 0 else 0.0

    def eta(self) -> Optional[float]:
        """Seconds left at the rate so far; None once the estimate is used up (it was short)."""
        left = self.estimate - self.steps
        rate = self.rate()
        return left / rate if left > 0 and rate > 0 else None

    def _pace(self) -> str:
        eta = self.eta()
        remaining = f", about {_minutes(eta)} left" if eta is not None else ""
        return f", {self.rate():.1f}/s{remaining}"

    def _line(self, text: str) -> None:
        elapsed = self.clock() - self.started
        output.progress(f"{self.label}: {text}, {_minutes(elapsed)}", self.out)

    def split(self) -> Tuple[float, float]:
        """Seconds compiling and seconds linking (from the first vmlinux step to make's end;
        0 when make linked nothing)."""
        end = self.finished if self.finished is not None else self.clock()
        link_start = self.link_started if self.link_started is not None else end
        return round(link_start - self.started, 1), round(end - link_start, 1)

    def close(self, ok: bool) -> None:
        self.finished = self.clock()
        if self.bar is not None:
            self.bar.close()
        rate = f", {self.rate():.1f}/s" if self.steps else ""
        self._line(f"{'done' if ok else 'FAILED'} ({self.steps} objects compiled{rate})")


def _minutes(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60}m{whole % 60:02d}s"
