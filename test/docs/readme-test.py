#!/usr/bin/env python3
"""Runs README.md's shell examples in order, as a reader would paste them.

Usage: readme-test.py README.md   (env: CHORUS_BIN, CHORUSD_BIN, CHORUS_CHAOS_BIN,
CHORUS_BENCH_BIN: the build's binaries, whose folders go first on PATH)

Conventions (README.md follows them; this test enforces them):
- Every ```sh or ```console block runs, in README order, in one bash session
  started in an empty temporary directory, unless the line just before the
  fence is an HTML comment `<!-- readme-test: skip REASON -->`.
- In a block that runs, a line starting with "$ " is a command; a command
  line ending in "\\" continues on the next line. Any other line is the
  output a reader would see, shown, not checked.
- Each command must exit 0 (one that shows a refusal says so: `cmd || echo
  "refused: exit $?"`). A command ending in "&" (a daemon) must print a
  line and still be running then; the test waits for that line (chorusd's
  "listening on") before it goes on, as a reader would.
- Every loopback port written 127.0.0.1:PORT is replaced by a free one, the
  same free port for the same written port throughout. `chorus` without
  --connect goes to 127.0.0.1:7400, so $CHORUS_ADDR is set to 7400's
  replacement.

On a failure it prints the block (with README line numbers), the command as
run and its output, and exits 1. Every background process is stopped by its
PID at the end (the whole session's process group on a timeout).
CHORUS_README_VERBOSE=1 prints every command and its output.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = re.compile(r"<!--\s*readme-test:\s*skip\b.*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
PORT = re.compile(r"127\.0\.0\.1:(\d{2,5})")
DEFAULT_PORT = "7400"
SESSION_TIMEOUT_S = 240
DAEMON_WAIT_S = 20


class Block:
    def __init__(self, first_line, lines):
        self.first_line = first_line  # README line number of the first line inside the fence
        self.lines = lines
        self.commands = []  # (README line number, text)

    def source(self):
        return "\n".join(f"{self.first_line + i:4d}  {l}" for i, l in enumerate(self.lines))


def parse(readme_lines):
    """The runnable blocks, and an error for a shell block that is neither marked nor runnable."""
    blocks, errors = [], []
    i = 0
    while i < len(readme_lines):
        m = FENCE.match(readme_lines[i])
        if not m or not m.group(1):
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(readme_lines) and not readme_lines[j].startswith("```"):
            j += 1
        body = readme_lines[i + 1 : j]
        i = j + 1
        if lang not in ("sh", "console"):
            continue
        k = start - 1
        while k >= 0 and not readme_lines[k].strip():
            k -= 1
        if k >= 0 and SKIP.search(readme_lines[k]):
            continue
        block = Block(start + 2, body)
        n = 0
        while n < len(body):
            if body[n].startswith("$ "):
                line_no, text = start + 2 + n, body[n][2:]
                while text.rstrip().endswith("\\") and n + 1 < len(body):
                    n += 1
                    text += "\n" + body[n]
                block.commands.append((line_no, text))
            n += 1
        if not block.commands:
            errors.append(
                f"README.md:{start + 1}: a ```{lang} block without '$ ' commands: mark it "
                "<!-- readme-test: skip REASON --> or prefix its commands with '$ '"
            )
        else:
            blocks.append(block)
    return blocks, errors


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_background(command):
    code = command.split("#", 1)[0] if "#" in command else command
    return code.rstrip().endswith("&") and not code.rstrip().endswith("&&")


def main():
    readme = sys.argv[1]
    with open(readme, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, errors = parse(lines)
    if errors:
        print("\n".join(errors))
        return 1

    ports = {}
    for b in blocks:
        for _, c in b.commands:
            for p in PORT.findall(c):
                ports.setdefault(p, None)
    ports.setdefault(DEFAULT_PORT, None)
    for p in ports:
        ports[p] = str(free_port())

    def substitute(text):
        return PORT.sub(lambda m: "127.0.0.1:" + ports[m.group(1)], text)

    bins = [os.environ[v] for v in ("CHORUS_BIN", "CHORUSD_BIN", "CHORUS_CHAOS_BIN", "CHORUS_BENCH_BIN",
                                        "EXAMPLE_SERVICE_BIN")
            if os.environ.get(v)]
    env = dict(os.environ)
    env["PATH"] = ":".join(os.path.dirname(os.path.abspath(b)) for b in bins) + ":" + env["PATH"]
    for var in ("CHORUS_ADDR", "CHORUS_TOKEN", "CHORUS_TOKEN_FILE", "CHORUS_NODES",
                "CHORUS_NODES_FILE"):
        env.pop(var, None)
    env["CHORUS_ADDR"] = "127.0.0.1:" + ports[DEFAULT_PORT]

    work = tempfile.mkdtemp(prefix="chorus-readme-")
    logs = os.path.join(work, ".readme-test")
    os.mkdir(logs)
    script = [
        "__pids=()",
        "__stop() { for p in \"${__pids[@]}\"; do kill \"$p\" 2>/dev/null; done; "
        "for p in \"${__pids[@]}\"; do wait \"$p\" 2>/dev/null; done; }",
        "trap __stop EXIT",
        "exec </dev/null",
    ]
    steps = []  # (block, README line, command as run)
    for b in blocks:
        for line_no, c in b.commands:
            n = len(steps)
            run = substitute(c)
            steps.append((b, line_no, run))
            out = f"{logs}/{n}.out"
            script.append(f"echo {n} > {logs}/step")
            script.append("{\n" + run + "\n} >" + shlex.quote(out) + " 2>&1")
            script.append("__rc=$?")
            if is_background(c):
                script.append("__pids+=($!)")
                script.append(
                    f"for __i in $(seq {DAEMON_WAIT_S * 10}); do grep -q 'listening on' {out} && break; "
                    "kill -0 $! 2>/dev/null || break; sleep 0.1; done")
                script.append(f"sleep 0.2; kill -0 $! 2>/dev/null || {{ echo 'exited' > {logs}/failed; exit 1; }}")
                script.append(f"grep -q 'listening on' {out} || {{ echo 'no \"listening on\" line within {DAEMON_WAIT_S} s' > {logs}/failed; exit 1; }}")
            else:
                script.append(f"[ $__rc -eq 0 ] || {{ echo \"exit $__rc\" > {logs}/failed; exit 1; }}")
    script.append(f"echo done > {logs}/step")
    with open(f"{logs}/session.sh", "w") as f:
        f.write("\n".join(script) + "\n")

    started = time.monotonic()
    proc = subprocess.Popen(["bash", f"{logs}/session.sh"], cwd=work, env=env,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=SESSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session's group: bash and what it started
        proc.wait()
        rc = None
    elapsed = time.monotonic() - started

    if os.environ.get("CHORUS_README_VERBOSE"):
        for n, (_, line_no, run) in enumerate(steps):
            path = f"{logs}/{n}.out"
            out = open(path, errors="replace").read() if os.path.exists(path) else "(not run)\n"
            print(f"README.md:{line_no}: $ {run}\n{out}")
    step = open(f"{logs}/step").read().strip() if os.path.exists(f"{logs}/step") else "0"
    if rc == 0 and step == "done":
        print(f"README.md: {len(steps)} commands in {len(blocks)} blocks ran as pasted "
              f"({elapsed:.1f} s, in {work})")
        subprocess.run(["rm", "-rf", work])
        return 0
    n = int(step) if step.isdigit() else len(steps) - 1
    block, line_no, run = steps[n]
    why = open(f"{logs}/failed").read().strip() if os.path.exists(f"{logs}/failed") else \
        f"timed out after {SESSION_TIMEOUT_S} s" if rc is None else f"session exit {rc}"
    out = open(f"{logs}/{n}.out", errors="replace").read() if os.path.exists(f"{logs}/{n}.out") else ""
    print(f"README.md:{line_no}: this command failed ({why}):\n{run}\n")
    print(f"--- its output ---\n{out}--- the block ---\n{block.source()}\n")
    print(f"ports: {ports}; working directory kept: {work}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
