"""The contract tells a client what each refusal means: every ErrorReason is documented in common.proto
with the one status code it comes with, and the code raises each reason with that code, in every
service, and with metadata keys the documentation names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from services.runtime.errors import KNOWN_REASONS

ROOT = Path(__file__).resolve().parents[2]
COMMON = ROOT / "protos/giftcoin/common/v1/common.proto"
CODES = {
    "INVALID_ARGUMENT",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "ALREADY_EXISTS",
    "ABORTED",
    "UNAVAILABLE",
    "FAILED_PRECONDITION",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
}
# runtime.errors' helpers and the code each gives.
HELPERS = {
    "not_found": "NOT_FOUND",
    "already_exists": "ALREADY_EXISTS",
    "failed_precondition": "FAILED_PRECONDITION",
    "aborted": "ABORTED",
    "unavailable": "UNAVAILABLE",
    "bad_field": "INVALID_ARGUMENT",
    "resource_exhausted": "RESOURCE_EXHAUSTED",
}


def documented() -> dict[str, tuple[str, str]]:
    """reason -> (its status code, its whole comment), from the comments above each enum value."""
    reasons: dict[str, tuple[str, str]] = {}
    comment: list[str] = []
    for line in COMMON.read_text().split("enum ErrorReason {", 1)[1].splitlines():
        line = line.strip()
        if line.startswith("// ---"):  # a section's heading
            continue
        if line.startswith("//"):
            comment.append(line.removeprefix("//").strip())
            continue
        value = re.match(r"ERROR_REASON_([A-Z_]+) = \d+;", line)
        if value and value.group(1) != "UNSPECIFIED":
            text = " ".join(comment)
            codes = [code for code in CODES if re.match(rf"{code}\b", text)]
            reasons[value.group(1)] = (codes[0] if len(codes) == 1 else "", text)
        if not line.startswith("//"):
            comment = []
    return reasons


def raised() -> list[tuple[str, str, str, list[str]]]:
    """(where, reason, code, metadata keys) of every refusal the services' code makes with a literal reason."""
    found: list[tuple[str, str, str, list[str]]] = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            args = node.args
            if name in HELPERS and args and isinstance(args[0], ast.Constant) and isinstance(args[0].value, str):
                keys = [k.arg for k in node.keywords if k.arg]
                found.append((f"{path.name}:{node.lineno}", args[0].value, HELPERS[name], keys))
            elif name == "DomainError" and len(args) >= 2 and isinstance(args[1], ast.Constant):
                code = getattr(args[0], "attr", "")
                given = getattr(args[3], "keys", []) if len(args) > 3 else []
                keys = [str(k.value) for k in given if isinstance(k, ast.Constant)]
                found.append((f"{path.name}:{node.lineno}", str(args[1].value), code, keys))
    return found


def test_every_reason_is_documented_with_one_status_code() -> None:
    docs = documented()
    assert set(docs) == KNOWN_REASONS
    undocumented = sorted(reason for reason, (code, _) in docs.items() if not code)
    assert not undocumented, f"say the status code of {undocumented} first in its comment in common.proto"


def test_each_reason_is_raised_with_its_documented_code_and_documented_metadata() -> None:
    docs = documented()
    sites = raised()
    assert len(sites) > 50  # the scan sees the services' refusals
    problems = []
    for where, reason, code, keys in sites:
        documented_code, text = docs[reason]
        if code != documented_code:
            problems.append(f"{where}: {reason} raised as {code}, documented as {documented_code}")
        for key in keys:
            if f"`{key}`" not in text:
                problems.append(f"{where}: {reason}'s metadata key {key!r} is not documented")
    assert not problems, "\n".join(problems)
