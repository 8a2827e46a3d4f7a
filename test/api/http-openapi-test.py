#!/usr/bin/env python3
"""Every route of api/http/openapi.json answers as documented.

Starts three chorusd (each stopped by its PID at the end): A with --no-auth
and a cluster, B with a tokens file, C with --no-auth and no cluster. Then,
for every path and method the document has, calls it with valid and
invalid input (a table below; the test fails if the document has an
operation the table lacks, or the table one the document lacks) and checks
that the status is one the operation documents, that the Content-Type is
the one documented for that status, and that the JSON body validates
against the documented schema (types, required and only documented
properties, enums, patterns, ranges). On B every operation but the
document itself must answer 401 without a token, as documented.

Usage: http-openapi-test.py OPENAPI_JSON   (CHORUSD_BIN and CHORUS_BIN set)
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

DOC = json.load(open(sys.argv[1]))
CHORUSD = os.environ["CHORUSD_BIN"]
CHORUS = os.environ["CHORUS_BIN"]
failures = []


def fail(what):
    failures.append(what)
    print("FAIL: " + what, flush=True)


# ---- JSON Schema, the subset the document uses -------------------------------

def resolve(schema):
    while "$ref" in schema:
        node = DOC
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = node
    return schema


def validate(value, schema, where):
    """Problems of `value` against `schema`, as strings."""
    schema = resolve(schema)
    out = []
    t = schema.get("type")
    ok_type = {
        None: True,
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, (int, float)) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
    }[t]
    if not ok_type:
        return [f"{where}: {value!r} is not {t}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if t == "string" and "pattern" in schema and not re.search(schema["pattern"], value):
        out.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if t in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(f"{where}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            out.append(f"{where}: {value} > {schema['maximum']}")
    if t == "array":
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1 << 62):
            out.append(f"{where}: {len(value)} items")
        for i, item in enumerate(value):
            out += validate(item, schema["items"], f"{where}[{i}]")
    if t == "object":
        props = schema.get("properties", {})
        for name in schema.get("required", []):
            if name not in value:
                out.append(f"{where}: missing {name}")
        for name, v in value.items():
            if "properties" not in schema:
                continue  # a free-form object
            if name not in props:
                out.append(f"{where}: undocumented property {name}")
            else:
                out += validate(v, props[name], f"{where}.{name}")
    return out


# ---- nodes ---------------------------------------------------------------------

class Node:
    def __init__(self, tmp, name, args):
        self.log = os.path.join(tmp, name + ".log")
        self.proc = subprocess.Popen(
            [CHORUSD, "--node-id", name, "--data-dir", os.path.join(tmp, name),
             "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--unsafe-no-sync",
             "--log-level", "warn"] + args,
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.name = name
        self.tmp = tmp
        deadline = time.time() + 20
        self.port = None
        while time.time() < deadline and self.port is None:
            m = re.search(r"chorusd: http on http://127\.0\.0\.1:(\d+)/", open(self.log).read())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                break
            else:
                time.sleep(0.02)
        if self.port is None:
            raise RuntimeError(f"chorusd {name} did not start:\n" + open(self.log).read())

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def call(node, method, path, body=None, token=None, ctype="application/json", raw=None,
         headers=None):
    """(status, content type, parsed JSON or text, headers)."""
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = "Bearer " + token
    data = None
    if body is not None:
        data = (json.dumps(body) if raw is None else raw).encode()
        headers["Content-Type"] = ctype
    elif raw is not None:
        data = raw.encode()
        headers["Content-Type"] = ctype
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=20)
    c.request(method, path, body=data, headers=headers)
    r = c.getresponse()
    text = r.read().decode()
    c.close()
    ctype_out = (r.getheader("Content-Type") or "").split(";")[0].strip()
    parsed = text
    if ctype_out.endswith("json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            fail(f"{method} {path}: {ctype_out} body is not JSON: {text[:200]}")
    return r.status, ctype_out, parsed, r


def too_large(node, path):
    """A PUT announcing a body over the limit; the server answers at once."""
    s = socket.create_connection(("127.0.0.1", node.port), timeout=20)
    s.sendall(f"PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {2 << 20}\r\n\r\n{{".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:] if ":" in l}
    length = int(hdrs.get("content-length", "0"))
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    s.close()
    return status, hdrs.get("content-type", "").split(";")[0], json.loads(rest.decode())


def watch_first(node, path):
    """Opens a watch, reads its first event block, closes."""
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    c.request("GET", path)
    r = c.getresponse()
    ctype = (r.getheader("Content-Type") or "").split(";")[0]
    if r.status != 200:
        body = json.loads(r.read().decode())
        c.close()
        return r.status, ctype, body
    first = r.readline().decode()
    c.close()
    return r.status, ctype, first


# ---- the operations and their inputs --------------------------------------------

def operations():
    for path, item in DOC["paths"].items():
        for method, op in item.items():
            if method != "parameters":
                yield path, method.upper(), op


def check(op_id, method, path, got, expect):
    """`got` = (status, content type, body): documented, and `expect`ed."""
    status, ctype, body = got[0], got[1], got[2]
    ops = {o["operationId"]: o for _, _, o in operations()}
    op = ops[op_id]
    what = f"{op_id}: {method} {path} -> {status}"
    if status != expect:
        fail(f"{what}, expected {expect}: {str(body)[:300]}")
    resp = op["responses"].get(str(status))
    if resp is None:
        fail(f"{what}: status not documented ({sorted(op['responses'])})")
        return
    if "$ref" in resp:
        resp = DOC["components"]["responses"][resp["$ref"].split("/")[-1]]
    content = resp.get("content", {})
    if ctype not in content:
        fail(f"{what}: Content-Type {ctype!r} not documented ({list(content)})")
        return
    if ctype.endswith("json"):
        for problem in validate(body, content[ctype]["schema"], "body"):
            fail(f"{what}: {problem}")


def main():
    tmp = tempfile.mkdtemp(prefix="chorus-openapi-")
    key = os.path.join(tmp, "cluster.key")
    gen = subprocess.run([CHORUS, "cluster", "keys", "generate"], capture_output=True, text=True,
                         timeout=20)
    with open(os.open(key, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(gen.stdout)
    other_key = subprocess.run([CHORUS, "cluster", "keys", "generate"], capture_output=True,
                               text=True, timeout=20).stdout.split()[0]
    tokens_file = os.path.join(tmp, "tokens")
    tokens = {}
    for who, roles in [("admin", "admin"), ("ann", "writer"), ("rita", "reader")]:
        r = subprocess.run([CHORUS, "token", "create", "--principal", who, "--roles", roles,
                            "--tokens-file", tokens_file], capture_output=True, text=True,
                           timeout=20)
        tokens[who] = r.stdout.strip().split()[-1]
    nodes = []
    try:
        a = Node(tmp, "a", ["--no-auth", "--gossip-listen", "127.0.0.1:0", "--cluster-key-file",
                            key])
        nodes.append(a)
        b = Node(tmp, "b", ["--tokens-file", tokens_file])
        nodes.append(b)
        c = Node(tmp, "c", ["--no-auth"])
        nodes.append(c)
        run_cases(a, b, c, tokens, other_key)
    finally:
        for n in nodes:
            n.stop()
    print(f"{len(failures)} failed", flush=True)
    return 1 if failures else 0


def run_cases(a, b, c, tokens, other_key):
    R = "/v1/products/p1/reviews/ann"
    covered = set()

    def t(op_id, node, method, path, expect, body=None, **kw):
        covered.add(op_id)
        check(op_id, method, path, call(node, method, path, body, **kw), expect)

    # Writes and reads of one review, on A (--no-auth: every caller is admin).
    t("put", a, "PUT", R, 200, {"rating": 5, "title": "Great", "body": "Loved it \u00e9"})
    t("put", a, "PUT", "/v1/products/p1/reviews/bob", 200, {"rating": 2})
    t("put", a, "PUT", R, 400, {"rating": 9})
    t("put", a, "PUT", R, 400, {"rating": 5, "stars": 1})
    t("put", a, "PUT", R, 400, raw="{not json")
    t("put", a, "PUT", R, 415, raw="rating=5", ctype="text/plain")
    t("put", a, "PUT", "/v1/products/bad%20id/reviews/ann", 400, {"rating": 5})
    check("put", "PUT", R, too_large(a, R), 413)
    t("get", a, "GET", R, 200)
    t("get", a, "GET", "/v1/products/p1/reviews/nobody", 404)
    t("get", a, "GET", "/v1/products/p1/reviews/no%zzbody", 400)
    t("vote", a, "PUT", R + "/votes/bob", 200)
    t("vote", a, "PUT", R + "/votes/ann", 403)
    t("vote", a, "PUT", "/v1/products/p1/reviews/nobody/votes/bob", 404)
    t("unvote", a, "DELETE", R + "/votes/bob", 200)
    t("unvote", a, "DELETE", R + "/votes/b%20b", 400)
    t("tag", a, "PUT", R + "/tags/fast", 200)
    t("tag", a, "PUT", R + "/tags/fast", 400, {"extra": True})
    t("untag", a, "DELETE", R + "/tags/fast", 200)
    t("untag", a, "DELETE", "/v1/products/p1/reviews/nobody/tags/fast", 404)
    t("moderate", a, "PUT", R + "/moderation", 200, {"visibility": "flagged", "reason": "check"})
    t("moderate", a, "PUT", R + "/moderation", 400, {"visibility": "gone"})
    t("reply", a, "PUT", R + "/reply", 200, {"text": "Thanks!"})
    t("reply", a, "PUT", R + "/reply", 400, {})
    # Listings.
    t("list", a, "GET", "/v1/products/p1/reviews?order=highestRating&limit=10", 200)
    t("list", a, "GET", "/v1/products/p1/reviews?order=best", 400)
    t("list", a, "GET", "/v1/products/p1/reviews?colour=red", 400)
    t("summary", a, "GET", "/v1/products/p1/summary", 200)
    t("summary", a, "GET", "/v1/products/%2F/summary", 400)
    t("page", a, "GET", "/v1/products/p1/page?limit=1", 200)
    t("page", a, "GET", "/v1/products/p1/page?limit=-1", 400)
    t("byAuthor", a, "GET", "/v1/authors/ann/reviews?limit=5", 200)
    t("byAuthor", a, "GET", "/v1/authors/ann/reviews?order=newest", 400)
    # Read your writes: a write's token, in its body and header, read back.
    status, _, body, resp = call(a, "PUT", R, {"rating": 4, "title": "Again"})
    token = resp.getheader("Chorus-Session") or ""
    if status != 200 or not token or body.get("session") != token:
        fail(f"put: no session token in the answer ({status}, {token!r}, {str(body)[:200]})")
    t("get", a, "GET", R + "?session=" + token, 200)
    t("summary", a, "GET", "/v1/products/p1/summary", 200, headers={"Chorus-Session": token})
    t("page", a, "GET", "/v1/products/p1/page?session=garbage", 400)
    # The change feed.
    t("changes", a, "GET", "/v1/changes?since=0&limit=2&include_docs=true", 200)
    t("changes", a, "GET", "/v1/changes?since=now", 200)
    t("changes", a, "GET", "/v1/changes?since=now&feed=longpoll&timeout=50", 200)
    t("changes", a, "GET", "/v1/changes?since=yesterday", 400)
    t("changes", a, "GET", "/v1/changes?limit=1001", 400)
    t("changes", a, "GET", "/v1/changes?since=99999999", 400)  # another node's cursor
    status, ctype, first = watch_first(a, "/v1/changes?feed=eventsource&since=now&heartbeat=100")
    check("changes", "GET", "changes?feed=eventsource", (status, ctype, first), 200)
    if not str(first).startswith("id: "):
        fail(f"changes: the event stream's first line is {first!r}, not an id")
    t("info", a, "GET", "/v1/info", 200)
    covered.add("watch")
    status, ctype, first = watch_first(a, "/v1/products/p1/watch?heartbeat=100")
    check("watch", "GET", "watch", (status, ctype, first), 200)
    if not str(first).startswith(":"):
        fail(f"watch: the stream's first line is {first!r}, not a comment")
    check("watch", "GET", "watch?heartbeat=5",
          watch_first(a, "/v1/products/p1/watch?heartbeat=5"), 400)
    # The node and its cluster.
    t("status", a, "GET", "/v1/node/status", 200)
    t("health", a, "GET", "/v1/node/health", 200)
    backup_dir = os.path.join(a.tmp, "a-backup")
    t("backup", a, "POST", "/v1/node/backup", 200, {"dir": backup_dir})
    if not os.path.isfile(os.path.join(backup_dir, "backup.manifest")):
        fail(f"backup: answered 200 but {backup_dir} holds no backup.manifest")
    t("backup", a, "POST", "/v1/node/backup", 400, {"dir": backup_dir})  # not empty now
    t("backup", a, "POST", "/v1/node/backup", 400, {"dir": "relative/dir"})
    t("backup", a, "POST", "/v1/node/backup", 400, {})
    t("backup", c, "POST", "/v1/node/backup", 200, {"dir": os.path.join(c.tmp, "c-backup")})
    t("cluster", a, "GET", "/v1/cluster", 200)
    t("cluster", c, "GET", "/v1/cluster", 503)  # no cluster
    t("partition", a, "POST", "/v1/cluster/partition", 200, {"peers": ["ghost"]})
    t("partition", a, "POST", "/v1/cluster/partition", 400, {"peers": ["a"]})  # itself
    t("partition", a, "POST", "/v1/cluster/partition", 400, {"peers": "ghost"})
    t("partition", c, "POST", "/v1/cluster/partition", 503, {"peers": ["ghost"]})
    t("heal", a, "POST", "/v1/cluster/heal", 200)
    t("heal", a, "POST", "/v1/cluster/heal", 400, {"now": True})
    t("keysList", a, "GET", "/v1/cluster/keys", 200)
    t("keys", a, "POST", "/v1/cluster/keys", 200, {"op": "list"})
    t("keys", a, "POST", "/v1/cluster/keys", 400, {"op": "zap"})
    t("keys", a, "POST", "/v1/cluster/keys", 404, {"op": "remove", "key": other_key})
    t("remove", a, "POST", "/v1/cluster/remove", 404, {"node": "ghost"})
    t("remove", a, "POST", "/v1/cluster/remove", 400, {"node": "a"})
    t("erase", a, "DELETE", "/v1/products/p1/reviews/bob", 200)
    t("erase", a, "DELETE", "/v1/products/p1/reviews/bob", 404)
    t("openapi", a, "GET", "/v1/openapi.json", 200)
    # The dashboard and its overview (api/http/overview.h); A is a cluster of
    # one, C has no cluster (the overview shows it alone; heal is refused).
    t("dashboard", a, "GET", "/", 200)
    t("dashboardFile", a, "GET", "/dashboard/app.js", 200)
    t("dashboardFile", a, "GET", "/dashboard/nope.js", 404)
    t("overview", a, "GET", "/v1/cluster/overview", 200)
    t("overview", c, "GET", "/v1/cluster/overview", 200)
    t("overviewPartition", a, "POST", "/v1/cluster/overview/partition", 400,
      {"a": ["a"], "b": ["ghost"]})
    t("overviewPartition", a, "POST", "/v1/cluster/overview/partition", 400, {"a": ["a"]})
    t("overviewPartition", a, "POST", "/v1/cluster/overview/partition", 400,
      {"a": "a", "b": ["x"]})
    t("overviewHeal", a, "POST", "/v1/cluster/overview/heal", 200)
    t("overviewHeal", a, "POST", "/v1/cluster/overview/heal", 400, {"now": True})
    t("overviewHeal", c, "POST", "/v1/cluster/overview/heal", 503)
    t("leave", a, "POST", "/v1/cluster/leave", 400, {"timeoutMillis": 400000})
    # Last on A: a lone node's leave finds no peer to take its data.
    t("leave", a, "POST", "/v1/cluster/leave", 503, {"timeoutMillis": 200})
    t("put", a, "PUT", R, 503, {"rating": 4})  # it left: writes are refused

    # B: tokens. Without one, every operation but the document is 401.
    samples = {"product": "p1", "author": "ann", "voter": "bob", "tag": "fast", "file": "app.js"}
    no_token = ("openapi", "info", "dashboard", "dashboardFile")  # documented as needing none
    for path, method, op in operations():
        concrete = re.sub(r"\{(\w+)\}", lambda m: samples[m.group(1)], path)
        if op["operationId"] in ("watch", "changes"):
            got = watch_first(b, concrete)
        else:
            got = call(b, method, concrete)
        check(op["operationId"], method, concrete, got,
              200 if op["operationId"] in no_token else 401)
    t("put", b, "PUT", R, 401, {"rating": 5}, token="chorus_" + "x" * 43)  # unknown token
    t("put", b, "PUT", R, 200, {"rating": 5}, token=tokens["ann"])
    t("put", b, "PUT", "/v1/products/p1/reviews/bob", 403, {"rating": 5}, token=tokens["ann"])
    t("put", b, "PUT", R, 403, {"rating": 5}, token=tokens["rita"])
    t("get", b, "GET", R, 200, token=tokens["rita"])
    t("status", b, "GET", "/v1/node/status", 403, token=tokens["rita"])
    t("status", b, "GET", "/v1/node/status", 200, token=tokens["admin"])
    t("health", b, "GET", "/v1/node/health", 200, token=tokens["rita"])
    t("cluster", b, "GET", "/v1/cluster", 403, token=tokens["ann"])
    t("backup", b, "POST", "/v1/node/backup", 403, {"dir": os.path.join(b.tmp, "b-backup")},
      token=tokens["ann"])
    t("overview", b, "GET", "/v1/cluster/overview", 200, token=tokens["admin"])
    t("overview", b, "GET", "/v1/cluster/overview", 403, token=tokens["ann"])

    documented = {op["operationId"] for _, _, op in operations()}
    for missing in sorted(documented - covered):
        fail(f"{missing}: documented, but this test has no case for it")
    for extra in sorted(covered - documented):
        fail(f"{extra}: this test calls it, but the document lacks it")


if __name__ == "__main__":
    sys.exit(main())
