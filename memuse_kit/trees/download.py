"""HTTP downloads into the cache: progress, resume of a .part file, sha256 checked before use."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional, TextIO

from memuse_kit.core import output
from memuse_kit.core.digest import sha256_file
from memuse_kit.core.errors import KitError

if TYPE_CHECKING:  # requests and tqdm load when a transfer starts, not with every task
    import requests
    from tqdm import tqdm

TIMEOUT = (15.0, 60.0)  # seconds to connect, seconds between received bytes
CHUNK = 1 << 16  # a broken connection loses the chunk being read; resume starts before it
ATTEMPTS = 3
HEADERS = {"Accept-Encoding": "identity"}  # byte ranges must count the file's own bytes

_REASONS = (
    ("Name or service not known", "host name not found"),
    ("Temporary failure in name resolution", "host name not found"),
    ("NameResolutionError", "host name not found"),
    ("Connection refused", "connection refused"),
    ("Network is unreachable", "network unreachable"),
    ("No route to host", "no route to host"),
    ("timed out", "timed out"),
    ("SSLError", "TLS error"),
    ("IncompleteRead", "connection closed early"),
    ("Connection broken", "connection closed early"),
)
_SUM_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S+)\s*$", re.MULTILINE)


class Unreachable(KitError):
    """The host of url could not be reached at all (no name, refused, timed out)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach {url} ({reason}); check the network, "
            "or choose another --source or an existing --tree DIR"
        )
        self.url = url
        self.reason = reason


class _Interrupted(Exception):
    """The transfer stopped before the end; the .part file keeps what arrived."""


class TransferProgress:
    """A tqdm bar on a terminal, otherwise a plain line at every tenth of the total."""

    def __init__(
        self,
        label: str,
        total: Optional[int],
        *,
        initial: int = 0,
        unit: str = "B",
        out: Optional[TextIO] = None,
    ) -> None:
        self.label = label
        self.total = total or None
        self.done = initial
        self.unit = unit
        self.out = out or sys.stderr
        # without a total, report every 64 MB (or 50,000 objects)
        self.step = 64e6 if unit == "B" else 50000
        self.reported = self._mark()
        self.bar: Optional[tqdm] = None
        if self.out.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                initial=initial,
                desc=label,
                unit=unit,
                unit_scale=unit == "B",
                file=self.out,
                leave=False,
            )

    def _mark(self) -> int:
        if self.total:  # in integers: 36 // 3.6 is 9.0 in floating point, so 100% was lost
            return min(self.done * 10 // self.total, 10)
        return int(self.done // self.step)

    def _amount(self, count: float) -> str:
        return f"{count / 1e6:.1f} MB" if self.unit == "B" else f"{int(count)} {self.unit}"

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        mark = self._mark()
        if mark > self.reported:
            self.reported = mark
            output.progress(f"{self.label}: {self._describe()}", self.out)

    def _describe(self) -> str:
        if not self.total:
            return self._amount(self.done)
        percent = min(100, self.done * 100 // self.total)
        return f"{percent}% ({self._amount(self.done)} of {self._amount(self.total)})"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def parse_sha256sums(text: str) -> Dict[str, str]:
    """file name -> sha256 from `sha256sum` output, clearsigned or not."""
    return {name: digest.lower() for digest, name in _SUM_LINE.findall(text)}


def fetch_text(url: str, session: Optional[requests.Session] = None) -> str:
    response = _get(session, url, {})
    with response:
        _check_status(url, response)
        return response.text


def fetch_file(
    url: str,
    dest: Path,
    sha256: str,
    *,
    size: Optional[int] = None,
    out: Optional[TextIO] = None,
    session: Optional[requests.Session] = None,
) -> bool:
    """Make dest the file at url with that sha256. False when dest already was; True if fetched.

    The bytes go to dest.part (resumed on the next run if interrupted) and become dest only
    after the sha256 matches, so nothing ever trusts a truncated or corrupted download.
    """
    sha256 = sha256.lower()
    if dest.is_file():
        if sha256_file(dest) == sha256:
            return False
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    resumed = _transfer(url, part, size, out, session)
    digest = sha256_file(part)
    if digest != sha256 and resumed:
        # the kept part may hold another upload's bytes: one clean download from the start
        part.unlink()
        _transfer(url, part, size, out, session)
        digest = sha256_file(part)
    if digest != sha256:
        part.unlink()
        raise KitError(
            f"{url} failed its sha256 check (expected {sha256}, got {digest}); "
            "the download was deleted and nothing was unpacked"
        )
    os.replace(part, dest)
    return True


def _transfer(
    url: str,
    part: Path,
    size: Optional[int],
    out: Optional[TextIO],
    session: Optional[requests.Session],
) -> bool:
    """Fill part with url's bytes, resuming what it holds; True when it held some already."""
    resumed = part.is_file() and part.stat().st_size > 0
    problem = ""
    for _ in range(ATTEMPTS):
        try:
            _attempt(url, part, size, out, session)
            return resumed
        except _Interrupted as error:
            problem = str(error)
    raise KitError(
        f"the download of {url} kept stopping early ({problem}); run the command again to resume it"
    )


def _attempt(
    url: str,
    part: Path,
    size: Optional[int],
    out: Optional[TextIO],
    session: Optional[requests.Session],
) -> None:
    offset = part.stat().st_size if part.is_file() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return  # complete already; the sha256 check decides
    response = _get(session, url, {"Range": f"bytes={offset}-"} if offset else {})
    with response:
        if response.status_code == 416 and offset:
            # nothing past the end: the part is whole, or the sha256 check rejects it
            total = size
        else:
            _check_status(url, response)
            if response.status_code == 206 and _range_start(response) != offset:
                part.unlink()
                raise _Interrupted("the server sent another byte range")
            if response.status_code != 206:
                offset = 0  # the server ignored Range: start over cleanly
            total = size if size is not None else _total(response, offset)
            _save(response, part, offset, total, out)
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Interrupted(f"got {got} of {total} bytes")


def _save(
    response: requests.Response,
    part: Path,
    offset: int,
    total: Optional[int],
    out: Optional[TextIO],
) -> None:
    import requests

    name = part.name[: -len(".part")]
    progress = TransferProgress(f"downloading {name}", total, initial=offset, out=out)
    try:
        with part.open("ab" if offset else "wb") as handle:
            for chunk in response.iter_content(CHUNK):
                handle.write(chunk)
                progress.update(len(chunk))
    except requests.RequestException as error:
        raise _Interrupted(reason(error)) from None
    finally:
        progress.close()


def _total(response: requests.Response, offset: int) -> Optional[int]:
    length = response.headers.get("Content-Length", "")
    return offset + int(length) if length.isdigit() else None


def _range_start(response: requests.Response) -> int:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else -1


def _get(
    session: Optional[requests.Session], url: str, headers: Dict[str, str]
) -> requests.Response:
    import requests

    getter = session.get if session is not None else requests.get
    try:
        return getter(url, headers={**HEADERS, **headers}, stream=True, timeout=TIMEOUT)
    except (requests.ConnectionError, requests.Timeout) as error:
        raise Unreachable(url, reason(error)) from None
    except requests.RequestException as error:
        raise KitError(f"cannot download {url}: {reason(error)}") from None


def _check_status(url: str, response: requests.Response) -> None:
    if response.status_code not in (200, 206):
        raise KitError(f"{url} answered HTTP {response.status_code} {response.reason}")


def reason(error: BaseException) -> str:
    """A few words for a network error, instead of urllib3's nested repr."""
    text = str(error)
    for pattern, words in _REASONS:
        if pattern in text:
            return words
    return type(error).__name__
