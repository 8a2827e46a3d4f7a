#!/usr/bin/env python3
"""Sums test cases over a meson testlog.json; prints 'N passed, M failed'.

A program that printed a doctest summary contributes its case counts; one
that did not (a script, or a crash before the summary) counts as one case.
A program that failed without reporting a failed case counts one failure.
A skipped program counts as neither passed nor failed, and is named.
Exits 1 when anything failed or no test ran.
"""
import json
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed")

passed = failed = programs = 0
with open(sys.argv[1]) as log:
    for line in log:
        entry = json.loads(line)
        programs += 1
        if entry.get("result") == "SKIP":
            print(f"SKIPPED: {entry.get('name')}", file=sys.stderr)
            continue
        ok = entry.get("result") in ("OK", "EXPECTEDFAIL")
        found = SUMMARY.findall(entry.get("stdout") or "")
        if found:
            _, p, f = (int(x) for x in found[-1])
            if not ok and f == 0:
                f = 1  # crashed or timed out after its summary
        else:
            p, f = (1, 0) if ok else (0, 1)
        if not ok:
            print(f"FAILED: {entry.get('name')} ({entry.get('result')})", file=sys.stderr)
        passed += p
        failed += f

print(f"({programs} test programs)", file=sys.stderr)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or programs == 0 else 0)
