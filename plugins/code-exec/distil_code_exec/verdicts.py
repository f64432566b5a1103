"""What a grading run's output is worth: the signed result lines the harness wrote
(:func:`read_signed`), and the verdict built from them (:func:`build_verdict`).

Only lines whose HMAC verifies under the run's key, for the run's nonce, count, the first per
test; a test without one has failed (``MISSING``). A response the sandbox cannot take (its code
larger than a job's file may be) gets a failed verdict saying why, without a run
(:func:`refused_verdict`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Optional

import distil_sandbox
from distil_core import Verdict

from .spec import CodeTests

MARKER = "DISTIL-RESULT"
MISSING = "no trustworthy result for this test: the grading run was cut short (killed, out of time or out of output)"


class SignedResults:
    """What the harness reported and signed: test payloads by index, a load error, completion."""

    def __init__(self) -> None:
        self.tests: dict[int, dict[str, Any]] = {}
        self.error: Optional[dict[str, Any]] = None
        self.done = False
        self.rejected = 0  # result-looking lines that failed the check
        self.seconds: Optional[float] = None  # how long the harness took over the run
        self.forked = 0  # its children forked from a batch job's fork server


def read_signed(stdout: str, key: bytes, nonce: str, count: int) -> SignedResults:
    """Keep the lines whose HMAC verifies under ``key`` for this ``nonce``; first one per test wins."""
    out = SignedResults()
    for line in stdout.splitlines():
        if not line.startswith(MARKER + " "):
            continue
        parts = line.split(" ", 2)
        if len(parts) != 3:
            out.rejected += 1
            continue
        _, mac, body = parts
        expected = hmac.new(key, body.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, mac):
            out.rejected += 1
            continue
        try:
            payload = json.loads(body)
        except ValueError:
            continue
        if not isinstance(payload, dict) or payload.get("nonce") != nonce:
            out.rejected += 1
            continue
        kind = payload.get("type")
        index = payload.get("index")
        if kind == "test" and isinstance(index, int) and 0 <= index < count and index not in out.tests:
            out.tests[index] = payload
        elif kind == "error" and out.error is None:
            out.error = payload
        elif kind == "done":
            out.done = True
            seconds = payload.get("seconds")
            out.seconds = float(seconds) if isinstance(seconds, (int, float)) else None
            out.forked = payload.get("forked") if isinstance(payload.get("forked"), int) else 0
    return out


def build_verdict(tests: CodeTests, result: distil_sandbox.ExecResult, signed: SignedResults) -> Verdict:
    rows = []
    for index in range(len(tests.cases)):
        row: dict[str, Any] = {
            "index": index,
            "kind": tests.kind,
            "input": tests.describe(index),
            "expected": tests.expected(index),
        }
        payload = signed.tests.get(index)
        if payload is None:
            row.update(passed=False, status="missing", actual=None, error=MISSING, stdout="", stderr="")
        else:
            status = str(payload.get("status"))
            row.update(
                passed=payload.get("passed") is True and status == "passed",
                status=status,
                actual=payload.get("actual"),
                error=payload.get("error"),
                stdout=payload.get("stdout") or "",
                stderr=payload.get("stderr") or "",
                seconds=payload.get("seconds"),
            )
            if tests.kind == "assert" and payload.get("expected") is not None:
                row["expected"] = payload["expected"]
        rows.append(row)
    passed = sum(row["passed"] for row in rows)
    details: dict[str, Any] = {
        "grader": "code_exec",
        "kind": tests.kind,
        "tests": rows,
        "passed_count": passed,
        "total": len(rows),
        "first_error": _first_error(signed, rows, tests),
        "backend": result.backend,
        "wall_s": result.wall_s,
        "timeout_s": tests.timeout_s,
    }
    if not signed.done:
        details["incomplete"] = (
            f"the grading run ended early (sandbox {'timed out' if result.timed_out else 'stopped'}"
            f"{', ' + result.error if result.error else ''})"
        )
    if result.error:
        details["infrastructure_error"] = result.error
    if signed.rejected:
        details["rejected_result_lines"] = signed.rejected
    all_passed = passed == len(rows) and len(rows) > 0
    return Verdict(score=passed / len(rows) if rows else 0.0, passed=all_passed, details=details)


def _first_error(signed: SignedResults, rows: list[dict[str, Any]], tests: CodeTests) -> Optional[dict[str, Any]]:
    if signed.error is not None:
        return {
            "stage": str(signed.error.get("stage")),
            "test_index": None,
            "message": str(signed.error.get("message") or ""),
            "traceback": str(signed.error.get("traceback") or ""),
        }
    for row in rows:
        if row["status"] in ("error", "timeout", "crashed", "invalid"):
            error = row.get("error") or ""
            last = error.strip().splitlines()[-1] if error.strip() else row["status"]
            return {
                "stage": {"timeout": "timeout", "invalid": "invalid"}.get(row["status"], "runtime"),
                "test_index": row["index"],
                "message": last,
                "traceback": error,
            }
    return None


def refused_verdict(tests: CodeTests, message: str, backend: str) -> Verdict:
    """The failed verdict of a response that was not run: every test failed with ``message``,
    which is also its first error (stage ``refused``), for the feedback to say."""
    rows = [{"index": index, "kind": tests.kind, "input": tests.describe(index), "expected": tests.expected(index),
             "passed": False, "status": "error", "actual": None, "error": message, "stdout": "", "stderr": ""}
            for index in range(len(tests.cases))]
    details = {"grader": "code_exec", "kind": tests.kind, "tests": rows, "passed_count": 0, "total": len(rows),
               "first_error": {"stage": "refused", "test_index": None, "message": message, "traceback": message},
               "backend": backend, "wall_s": 0.0, "timeout_s": tests.timeout_s}
    return Verdict(score=0.0, passed=False, details=details)
