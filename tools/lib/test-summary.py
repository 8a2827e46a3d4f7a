#!/usr/bin/env python3
"""Sums test cases over meson testlog.json files; prints 'N passed, M failed'.

Usage: test-summary.py TESTLOG.json [TESTLOG.json...] (e.g. the normal build's
and the sanitizer build's; tests of every file after the first are named
with their build directory, e.g. "build-asan/crdt-unit").

A program that printed a doctest summary contributes its case counts; one
that did not (a script, a fuzz corpus replay, or a crash before the summary)
counts as one case. A program that failed without reporting a failed case
counts one failure. A skipped program counts as neither passed nor failed,
and is named. Exits 1 when anything failed or no test ran.
"""
import json
import os
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed")

passed = failed = programs = 0
for index, path in enumerate(sys.argv[1:]):
    # .../BUILD/meson-logs/testlog.json -> "BUILD/" for every log but the first
    prefix = "" if index == 0 else os.path.basename(os.path.dirname(os.path.dirname(
        os.path.abspath(path)))) + "/"
    with open(path) as log:
        for line in log:
            entry = json.loads(line)
            name = prefix + str(entry.get("name"))
            programs += 1
            if entry.get("result") == "SKIP":
                print(f"SKIPPED: {name}", file=sys.stderr)
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
                print(f"FAILED: {name} ({entry.get('result')})", file=sys.stderr)
            passed += p
            failed += f

print(f"({programs} test programs)", file=sys.stderr)
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed or programs == 0 else 0)
