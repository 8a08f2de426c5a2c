"""Why a vLLM server fails, in one line and in vLLM's own words: the root cause in its log, or the error its
answer to a completion carries.

vLLM logs an error several times over as it travels from a worker to the engine core to the API server, each
layer wrapping the one below ("Engine core initialization failed. See root cause above"); the reason a user needs
is the innermost exception. A request that kills the engine gets only the outermost ("EngineCore encountered an
issue"), so the log is read first.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

REASON_CHARS = 300  # vLLM's messages can list every architecture it supports; one line stays readable
_VLLM_PREFIX = re.compile(r"^\(\w+ pid=\d+\) (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) [\d-]+ [\d:]+ \[[^\]]*\] ?")
_EXCEPTION = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Exit)|Exception)(?:: (?P<message>.*))?$")
_WRAPPERS = ("See root cause above", "See stack trace for root cause", "Engine core initialization failed",
             "See stack trace (above) for the root cause", "check the stack trace above for the root cause")


def log_since(log: Path, offset: int) -> str:
    """The text ``log`` gained after its first ``offset`` bytes ("" when it cannot be read)."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def one_line(reason: str) -> str:
    """``reason`` cut to REASON_CHARS."""
    return reason if len(reason) <= REASON_CHARS else reason[:REASON_CHARS - 1] + "…"


def _lines(log_text: str) -> list[str]:
    return [_VLLM_PREFIX.sub("", line.rstrip()) for line in log_text.splitlines()]


def _root_cause(lines: list[str]) -> str | None:
    reason = None
    for index, line in enumerate(lines):
        found = _EXCEPTION.match(line)
        if found is None or any(wrapper in line for wrapper in _WRAPPERS):
            continue
        kind, message = found["type"].rsplit(".", 1)[-1], (found["message"] or "").strip()
        if kind == "ValidationError" and index + 1 < len(lines):  # pydantic: the reason is on the next line
            message = re.sub(r"^Value error, ", "", lines[index + 1].strip())
            reason = re.sub(r" \[type=\w+, input_value=.*$", "", message)
        else:
            reason = f"{kind}: {message}" if message else kind
    return reason


def root_cause(log_text: str) -> str | None:
    """The last exception in the log that is not a wrapper around another ("Engine core initialization failed.
    See root cause above", "EngineCore encountered an issue. See stack trace (above) for the root cause"), as
    "Type: message" in one line; None when the log holds none."""
    reason = _root_cause(_lines(log_text))
    return None if reason is None else one_line(reason)


def startup_failure_reason(log_text: str) -> str:
    """vLLM's own reason for failing to start, in one line, from its log: its root cause, else the last error
    line, else the last line."""
    lines = _lines(log_text)
    reason = _root_cause(lines)
    if reason is None:
        errors = [line.strip() for line in lines if re.search(r"\bERROR\b|error:|Error\b", line)]
        reason = errors[-1] if errors else next((line.strip() for line in reversed(lines) if line.strip()), "")
    return one_line(reason or "it exited without a message")


def completion_error(url: str, served: str, prompt: str, timeout_s: float) -> str | None:
    """Why a completion of one token of ``prompt`` fails on the server at ``url`` (``http://HOST:PORT/v1``)
    serving ``served``, in the server's words when it gave any; None when it answers."""
    body = {"model": served, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    request = urllib.request.Request(f"{url}/completions", data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            choices = json.load(response).get("choices")
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error).get("error", {}).get("message")
        except (ValueError, AttributeError):
            message = None
        lines = str(message or "").strip().splitlines()
        return f"HTTP {error.code}: {lines[0]}" if lines else f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        return f"no answer ({getattr(error, 'reason', error)})"
    except (ValueError, AttributeError):
        return "its answer was not a completion"
    return None if isinstance(choices, list) and choices else "its answer was not a completion"
