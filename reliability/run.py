#!/usr/bin/env python3
"""Adversarial runs against the release binary, each ending in figures (docs/reliability.md).

  abuse  hostile HTTP: slowloris, 1 MB header, 100 MB bodies, a chunked body never finished,
         10,000 idle connections, invalid UTF-8, deeply nested JSON, huge draft arrays. Each is
         refused with its status, the service keeps answering, memory stays bounded.
  chaos  a bounded load while Redis is killed and restarted, the FHIR server is slow, failing or
         sends garbage, and the service gets SIGTERM. Failed hook calls and lost feedback: 0.
  soak   mixed traffic for a while (10 minutes by default, 60 s with --quick): RSS and open file
         descriptors stay flat.

Everything talks to 127.0.0.1 only and stops by itself (bounded counts and deadlines). Results go
to reliability/results/<name>.json; --update-docs puts them (and the fuzz and schemathesis
results beside them) into docs/reliability.md. Exit status 1 when a check fails.

Needs target/release/{offramp,benchkit} (reliability/run builds them), redis-server, and for the
FHIR scenarios node with tests/support/fhir-server installed (npm ci).
"""

import argparse
import asyncio
import copy
import importlib.util
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "reliability" / "results"
EXAMPLES = ROOT / "cds-hooks" / "examples" / "requests"
FHIR_SERVER = ROOT / "tests" / "support" / "fhir-server"
DOC = ROOT / "docs" / "reliability.md"

_spec = importlib.util.spec_from_file_location("benchrun", ROOT / "bench" / "run.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
free_port, wait_port, status_kb, kit = bench.free_port, bench.wait_port, bench.status_kb, bench.kit
RELEASE = bench.RELEASE
ISS = bench.ISS

FHIR_TOKEN = "reliability-fhir-token"
PATIENT_KEY = "reliability-patient-key-" * 2
ADMIN_TOKEN = "reliability-admin-token-" * 2
FAILURES = []
# Every process started, so none outlives the run whatever fails.
PROCS = []


def log(msg):
    print(f"[reliability {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def check(results, name, ok, **figures):
    """One checked figure: kept in the results and counted as a failure when not ok."""
    results[name] = dict(figures, ok=bool(ok))
    mark = "ok" if ok else "FAILED"
    log(f"{name}: {mark} {json.dumps(figures, default=str)}")
    if not ok:
        FAILURES.append(name)


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 1)


def examples():
    out = {}
    for f in sorted(EXAMPLES.glob("*.json")):
        if not f.name.endswith(".expected.json"):
            out[f.stem] = json.loads(f.read_text())
    return out


def fresh(req):
    r = copy.deepcopy(req)
    r["hookInstance"] = str(uuid.uuid4())
    return r


# ---------------------------------------------------------------------------------------------
# A minimal HTTP/1.1 client on asyncio streams: it sees exactly what the server does on the wire
# (a close without a response, a 408 after a stall), which a full client library would hide.

class Closed(Exception):
    """The connection ended before a whole response arrived."""


async def read_response(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = b""
    return status, headers, body


class Conn:
    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None
        self.last_ms = None

    async def request(self, method, path, body=b"", headers=None, timeout=20.0):
        """(status, headers, body); raises Closed when the server closed without answering."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
        if body or method == "POST":
            head += f"Content-Length: {len(body)}\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        t = time.perf_counter()
        try:
            self.writer.write(head.encode() + b"\r\n" + body)
            await self.writer.drain()
            status, h, b = await asyncio.wait_for(read_response(self.reader), timeout)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError) as e:
            self.close()
            raise Closed(type(e).__name__) from e
        except asyncio.TimeoutError:
            self.close()
            raise
        self.last_ms = (time.perf_counter() - t) * 1000
        if h.get("connection", "").lower() == "close":
            self.close()
        return status, h, b

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# ---------------------------------------------------------------------------------------------
# Tokens: minted by benchkit (the same ES384 key the service trusts), each used once.

class Tokens:
    LIFETIME = 240  # of the 300 s a token lives, leaving a margin

    def __init__(self, work):
        self.work = work
        self.pools = {}

    def mint(self, aud, n):
        # Runs in threads: a counter here would race and two mints could share a file.
        out = self.work / f"tokens-{uuid.uuid4()}.txt"
        kit("tokens", self.work, "ES384", n, aud, out)
        toks = out.read_text().split()
        out.unlink()
        return toks

    async def take(self, aud, batch=2000):
        """A fresh token; the pool is refilled in the background before it runs dry, so minting
        does not show in the measured latencies."""
        pool = self.pools.setdefault(aud, {"tokens": [], "minted": 0.0, "refill": None})
        if time.monotonic() - pool["minted"] > self.LIFETIME:
            pool["tokens"] = []
        if len(pool["tokens"]) < batch // 4 and pool["refill"] is None:
            pool["refill"] = asyncio.create_task(asyncio.to_thread(self.mint, aud, batch))
        if not pool["tokens"] or time.monotonic() - pool["minted"] > self.LIFETIME:
            await asyncio.shield(pool["refill"])
        if pool["refill"] is not None and pool["refill"].done():
            pool["tokens"] = pool["refill"].result() + pool["tokens"]
            pool["minted"] = time.monotonic()
            pool["refill"] = None
        return pool["tokens"].pop()


# ---------------------------------------------------------------------------------------------
# The service under test, and the real servers it talks to.

class Service:
    def __init__(self, work, name, *, fhir=None, redis_url=None, server=None, fixed_port=None):
        self.work = work
        self.name = name
        self.port = fixed_port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        server = dict({"shutdown_grace_ms": 0}, **(server or {}))
        lines = ["[server]", f'bind = "127.0.0.1:{self.port}"', f'public_base_url = "{self.base}"']
        lines += [f"{k} = {json.dumps(v)}" for k, v in server.items()]
        lines += ["[[auth.issuers]]", f'iss = "{ISS}"', 'algorithms = ["ES384"]',
                  f'jwks_file = "{work / "jwks.json"}"', f"fhir_servers = {json.dumps(fhir or [])}",
                  "[fhir]", "allow_plain_http = true", "[admin]", f'token = "{ADMIN_TOKEN}"']
        if redis_url:
            lines += ["[store]", 'backend = "redis"', f'patient_key = "{PATIENT_KEY}"',
                      "[store.redis]", f'url = "{redis_url}"', 'key_prefix = "offramp-rel:"']
        self.config = work / f"{name}.toml"
        self.config.write_text("\n".join(lines) + "\n")
        self.proc = None

    def start(self):
        self.logf = open(self.work / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen([str(RELEASE / "offramp"), "serve", "--config", str(self.config)],
                                     stdout=self.logf, stderr=self.logf, cwd=self.work)
        PROCS.append(self.proc)
        wait_port(self.port, self.proc)
        return self

    def rss_mb(self):
        return round(status_kb(self.proc.pid, "VmRSS") / 1024, 1)

    def peak_mb(self):
        return round(status_kb(self.proc.pid, "VmHWM") / 1024, 1)

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        bench.stop(self.proc)
        self.logf.close()

    def log_text(self):
        return (self.work / f"{self.name}.log").read_text(errors="replace")


class Redis:
    """Our own persistent redis-server (the shared one is never touched): an acknowledged write
    must survive a SIGKILL, as in production."""

    def __init__(self, work, durable=True):
        self.durable = durable
        self.port = free_port()
        self.dir = work / f"redis-{self.port}"
        self.dir.mkdir()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", *(["--appendonly", "yes", "--appendfsync", "always"] if self.durable
                             else ["--appendonly", "no"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        PROCS.append(self.proc)
        wait_port(self.port, self.proc)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-p", str(self.port), *map(str, args)],
                              capture_output=True, text=True, check=True).stdout

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.kill()


class Fhir:
    """The Medplum-based test FHIR server of the test suite, with its fault endpoints."""

    def __init__(self):
        if not (FHIR_SERVER / "node_modules" / "@medplum" / "fhir-router").is_dir():
            subprocess.run(["npm", "ci", "--silent", "--no-audit", "--no-fund"], cwd=FHIR_SERVER, check=True)
        self.proc = subprocess.Popen(["node", "server.mjs", "--token", FHIR_TOKEN], cwd=FHIR_SERVER,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        PROCS.append(self.proc)
        line = self.proc.stdout.readline().decode().strip()
        if not line.startswith("LISTENING "):
            raise RuntimeError(f"FHIR server: {line!r}")
        self.origin = f"http://127.0.0.1:{int(line.split()[1])}"

    def base(self, fault=None):
        return f"{self.origin}/fault/{fault}/fhir" if fault else f"{self.origin}/fhir"

    def load(self, resources):
        import urllib.request
        req = urllib.request.Request(f"{self.origin}/_admin/load", json.dumps(resources).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["loaded"]

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def prefetched_resources(req):
    out = []
    for v in req.get("prefetch", {}).values():
        if isinstance(v, dict) and v.get("resourceType") == "Bundle":
            out += [e["resource"] for e in v.get("entry", []) if "resource" in e]
        elif isinstance(v, dict) and "resourceType" in v:
            out.append(v)
    return out


def fetch_mode(req, base):
    r = copy.deepcopy(req)
    r["prefetch"] = {}
    r["fhirServer"] = base
    r["fhirAuthorization"] = {"access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
                              "scope": "patient/*.read", "subject": "offramp"}
    return r


class Client:
    """Signed calls to one service: a fresh token per request, as an EHR sends."""

    def __init__(self, svc, tokens):
        self.svc = svc
        self.tokens = tokens

    async def hook(self, conn, req, timeout=20.0):
        path = f"/cds-services/offramp-{req['hook']}"
        tok = await self.tokens.take(self.svc.base + path)
        return await conn.request("POST", path, json.dumps(req).encode(),
                                  {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
                                  timeout)

    async def feedback(self, conn, service, items, timeout=20.0):
        path = f"/cds-services/{service}/feedback"
        tok = await self.tokens.take(self.svc.base + path)
        return await conn.request("POST", path, json.dumps({"feedback": items}).encode(),
                                  {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
                                  timeout)

    async def raw_hook(self, conn, path, body, timeout=20.0, content_type="application/json"):
        tok = await self.tokens.take(self.svc.base + path)
        return await conn.request("POST", path, body, {"Authorization": f"Bearer {tok}",
                                                       "Content-Type": content_type}, timeout)


async def probe(client, req):
    """A normal call on a new connection: (status, ms)."""
    c = Conn(client.svc.port)
    tok = await client.tokens.take(client.svc.base + f"/cds-services/offramp-{req['hook']}")
    del tok  # the pool is now warm: the timing below is the request's alone
    t = time.perf_counter()
    try:
        status, _, _ = await client.hook(c, fresh(req), timeout=30)
    except (Closed, asyncio.TimeoutError) as e:
        status = type(e).__name__
    c.close()
    return status, round((time.perf_counter() - t) * 1000, 1)


# ---------------------------------------------------------------------------------------------
# abuse

async def open_raw(port):
    return await asyncio.open_connection("127.0.0.1", port)


async def until_closed(reader, limit):
    """Reads until EOF (or limit s): (seconds, bytes read)."""
    t = time.perf_counter()
    got = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), limit - (time.perf_counter() - t))
            if not chunk:
                break
            got += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    return round(time.perf_counter() - t, 2), got


def send_then_read(port, data, limit):
    """Blocking: send data (a reset mid-send is expected), then read until EOF or
    reset: (seconds, bytes read). Linux hands back data queued before a reset."""
    t = time.perf_counter()
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        while time.perf_counter() - t < limit:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            got += chunk
    return round(time.perf_counter() - t, 2), got


def status_of(raw):
    try:
        return int(raw.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


async def abuse(args, work, tokens, ex):
    res = {}
    svc = Service(work, "abuse").start()
    client = Client(svc, tokens)
    normal = ex["order-sign-opioid-with-benzo"]
    hook_path = "/cds-services/offramp-order-sign"
    limits = {"header_read_timeout_s": 5, "request_timeout_s": 10, "max_body_bytes": 1048576,
              "max_connections": 1024}
    res["limits"] = limits
    st, ms = await probe(client, normal)
    base_rss = svc.rss_mb()
    res["baseline"] = {"rss_mb": base_rss, "fds": svc.fds(), "probe_ms": ms}

    # invalid UTF-8 in a string of the envelope
    c = Conn(svc.port)
    body = json.dumps(fresh(normal)).encode().replace(b'"order-sign"', b'"order-\xff\xfesign"', 1)
    st, _, b = await client.raw_hook(c, hook_path, body)
    check(res, "invalid_utf8", st == 400, status=st, error=json.loads(b).get("error"))

    # deeply nested JSON: in the context, in the prefetch, in feedback
    depth = 100_000
    nested = "[" * depth + "]" * depth
    for where, path, text in [
        ("context", hook_path, '{"hook":"order-sign","hookInstance":"%s","context":%s}' % (uuid.uuid4(), nested)),
        ("prefetch", hook_path, json.dumps(fresh(normal))[:-1] + ',"prefetch":{"x":%s}}' % nested),
        ("feedback", "/cds-services/offramp-order-sign/feedback", '{"feedback":%s}' % nested),
    ]:
        st, _, b = await client.raw_hook(c, path, text.encode())
        check(res, f"nested_{where}", st == 400, depth=depth, status=st, ms=round(c.last_ms, 1))
    check(res, "nested_alive", svc.alive(), alive=svc.alive())

    # huge arrays of draft orders, up to the body limit
    draft = next(e for e in normal["context"]["draftOrders"]["entry"])
    one = json.dumps(draft)
    for hook, name in [("order-sign", "order-sign-opioid-with-benzo"),
                       ("order-select", "order-select-two-drafts-one-selected")]:
        req = fresh(ex[name])
        # As many as fit under the body limit (a selection costs about 40 bytes more).
        per = len(one) + 1 + (40 if hook == "order-select" else 0)
        n = (limits["max_body_bytes"] - len(json.dumps(req)) - 4096) // per
        entries = []
        for i in range(n):
            e = copy.deepcopy(draft)
            e["resource"]["id"] = f"draft-{i}"
            e.pop("fullUrl", None)
            entries.append(e)
        req["context"]["draftOrders"]["entry"] = entries
        if hook == "order-select":
            req["context"]["selections"] = [f"MedicationRequest/draft-{i}" for i in range(0, n, 2)]
        body = json.dumps(req).encode()
        st, _, b = await client.raw_hook(c, f"/cds-services/offramp-{hook}", body, timeout=30)
        ms = round(c.last_ms, 1)
        cards = len(json.loads(b).get("cards", [])) if st == 200 else None
        check(res, f"huge_drafts_{hook}", st in (200, 400, 413) and ms < limits["request_timeout_s"] * 1000,
              drafts=n, body_kb=len(body) // 1024, status=st, ms=ms, cards=cards, rss_mb=svc.rss_mb())
    c.close()

    # a 1 MB header. The server answers 431 and closes with the rest unread, so the
    # kernel resets the connection while we still write; asyncio drops its read buffer
    # on that error, so a plain socket reads what arrived before the reset.
    secs, got = await asyncio.to_thread(send_then_read, svc.port,
                                        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n", 10)
    check(res, "header_1mb", status_of(got) == 431, status=status_of(got), closed_after_s=secs)

    # 100 MB bodies: announced, and chunked without a length
    for mode in ("content_length", "chunked"):
        r, w = await open_raw(svc.port)
        tok = await tokens.take(svc.base + hook_path)
        head = (f"POST {hook_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                "Content-Type: application/json\r\n")
        head += "Content-Length: 104857600\r\n\r\n" if mode == "content_length" else "Transfer-Encoding: chunked\r\n\r\n"
        w.write(head.encode())
        sent, t = 0, time.perf_counter()
        chunk = b"[" * 65536
        frame = chunk if mode == "content_length" else b"10000\r\n" + chunk + b"\r\n"
        answer = b""
        try:
            while sent < 100 << 20 and time.perf_counter() - t < 30:
                w.write(frame)
                await asyncio.wait_for(w.drain(), 5)
                sent += len(chunk)
                try:
                    answer += await asyncio.wait_for(r.read(4096), 0.001)
                    if answer:
                        break
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, asyncio.TimeoutError):
            pass
        secs, rest = await until_closed(r, 10)
        answer += rest
        check(res, f"body_100mb_{mode}", status_of(answer) == 413 and sent < 100 << 20,
              status=status_of(answer), sent_mb=round(sent / (1 << 20), 1),
              seconds=round(time.perf_counter() - t, 2), rss_mb=svc.rss_mb())
        w.close()

    # a chunked body that is never finished
    r, w = await open_raw(svc.port)
    tok = await tokens.take(svc.base + hook_path)
    w.write((f"POST {hook_path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
             "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{\"hook\":\"order-s\r\n").encode())
    await w.drain()
    secs, got = await until_closed(r, 30)
    check(res, "unfinished_chunked", status_of(got) == 408 and secs < limits["request_timeout_s"],
          status=status_of(got), answered_after_s=secs)
    w.close()

    # slowloris: many connections trickling header bytes
    n = 200 if args.quick else 1000
    conns = [await open_raw(svc.port) for _ in range(n)]
    t0 = time.perf_counter()

    async def trickle(rw):
        r, w = rw
        line = b"POST /cds-services/offramp-order-sign HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        for i in range(len(line)):
            try:
                w.write(line[i:i + 1])
                await w.drain()
            except ConnectionError:
                break
            try:
                if not await asyncio.wait_for(r.read(1024), 1.0):
                    break
            except asyncio.TimeoutError:
                continue
            except ConnectionError:
                break
        return time.perf_counter() - t0

    tasks = [asyncio.create_task(trickle(rw)) for rw in conns]
    await asyncio.sleep(1.0)
    st, probe_ms = await probe(client, normal)
    closed = await asyncio.gather(*tasks)
    for _, w in conns:
        w.close()
    check(res, "slowloris", max(closed) < limits["header_read_timeout_s"] + 2 and st == 200,
          connections=n, all_closed_by_s=round(max(closed), 2), probe_status=st, probe_ms=probe_ms,
          rss_mb=svc.rss_mb())

    # 10,000 idle connections
    n = 10_000
    rss0 = svc.rss_mb()

    async def connect():
        try:
            return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", svc.port), 30)
        except (OSError, asyncio.TimeoutError):
            return None

    t0 = time.perf_counter()
    idle = await asyncio.gather(*[connect() for _ in range(n)])
    connected = sum(1 for x in idle if x)
    connect_s = round(time.perf_counter() - t0, 2)
    await asyncio.sleep(0.5)
    held_fds, held_rss = svc.fds(), svc.rss_mb()
    st, probe_ms = await probe(client, normal)
    # Beyond max_connections the oldest were closed to make room; the rest are closed after the
    # header read timeout. Count how many the server had closed 2 s after that.
    await asyncio.sleep(limits["header_read_timeout_s"] + 2)
    closed_by_server = 0
    for x in idle:
        if x:
            try:
                if await asyncio.wait_for(x[0].read(1), 0.001) == b"":
                    closed_by_server += 1
            except (asyncio.TimeoutError, ConnectionError):
                pass
            x[1].close()
    await asyncio.sleep(1.0)
    check(res, "idle_10k", st == 200 and connected == n
          and held_fds <= limits["max_connections"] + 64 and svc.alive(),
          connections=n, connected=connected, connect_s=connect_s, server_fds_while_held=held_fds,
          rss_mb_before=rss0, rss_mb_while_held=held_rss, probe_status=st, probe_ms=probe_ms,
          closed_by_server_after_timeout=closed_by_server, fds_after=svc.fds())

    # After all of it: answering, and memory back within bounds.
    await asyncio.sleep(1.0)
    st, ms = await probe(client, normal)
    check(res, "after_abuse", st == 200 and svc.peak_mb() < 300, probe_status=st, probe_ms=ms,
          rss_mb=svc.rss_mb(), peak_rss_mb=svc.peak_mb(), fds=svc.fds())
    svc.stop()
    panics = svc.log_text().count("panicked")
    check(res, "no_panic", panics == 0, panics=panics)
    return res


# ---------------------------------------------------------------------------------------------
# chaos

def feedback_item(card, i):
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_790_000_000 + i)) + ".000Z"
    if i % 2:
        return {"card": card, "outcome": "overridden", "outcomeTimestamp": ts,
                "overrideReason": {"reason": {"system": "http://offramp.health/fhir/CodeSystem/override-reason",
                                              "code": "patient-declines"}}}
    return {"card": card, "outcome": "accepted", "outcomeTimestamp": ts}


class Load:
    """Workers calling hooks (and posting feedback for the cards they get, retried on 503 as an
    EHR does) until `stop` is set. Every outcome is counted by phase."""

    def __init__(self, client, reqs, workers, phase, feedback=True, pace=0.0, allowed=lambda phase: (200,)):
        self.client = client
        self.reqs = reqs
        self.workers = workers
        self.phase = phase  # callable: the current phase name
        self.feedback = feedback
        self.pace = pace
        self.allowed = allowed
        self.stop = asyncio.Event()
        self.by_phase = {}
        self.pending = []
        self.acked = set()
        self.fb_503 = 0
        self.fb_other = []
        self.fb_sent = 0
        self.i = 0

    def count(self, phase, key, ms=None, allowed=(200,)):
        """Counted under the phase the request started in."""
        p = self.by_phase.setdefault(phase, {"ok": 0, "failed": {}, "ms": [], "status": {}})
        p["status"][str(key)] = p["status"].get(str(key), 0) + 1
        if key in allowed:
            p["ok"] += 1
            p["ms"].append(ms)
        else:
            p["failed"][str(key)] = p["failed"].get(str(key), 0) + 1

    async def post_feedback(self, conn, item):
        self.fb_sent += 1
        try:
            st, _, _ = await self.client.feedback(conn, "offramp-order-sign", [item])
        except (Closed, asyncio.TimeoutError):
            st = None
        if st == 200:
            self.acked.add(item["card"])
        elif st in (503, None):
            self.fb_503 += 1
            self.pending.append(item)
        else:
            self.fb_other.append(st)

    async def worker(self):
        conn, fconn = Conn(self.client.svc.port), Conn(self.client.svc.port)
        while not self.stop.is_set():
            self.i += 1
            req = fresh(self.reqs[self.i % len(self.reqs)])
            phase = self.phase()
            try:
                st, _, b = await self.client.hook(conn, req)
                ms = conn.last_ms
            except (Closed, asyncio.TimeoutError) as e:
                st, b, ms = type(e).__name__, b"", None
            self.count(phase, st, ms, self.allowed(phase))
            if self.feedback and st == 200:
                cards = json.loads(b).get("cards", [])
                card = cards[0]["uuid"] if cards else str(uuid.uuid4())
                await self.post_feedback(fconn, feedback_item(card, self.i))
                # Retries of earlier 503s, a few per call so the backlog drains after an outage.
                for _ in range(4):
                    if not self.pending:
                        break
                    await self.post_feedback(fconn, self.pending.pop(0))
            if self.pace:
                await asyncio.sleep(self.pace)
        conn.close()
        fconn.close()

    async def run(self):
        return await asyncio.gather(*[self.worker() for _ in range(self.workers)])

    async def settle(self, deadline_s):
        """Retries what is still pending (bounded)."""
        end = time.monotonic() + deadline_s

        async def one():
            conn = Conn(self.client.svc.port)
            while self.pending and time.monotonic() < end:
                before = self.fb_503
                await self.post_feedback(conn, self.pending.pop(0))
                if self.fb_503 > before:
                    await asyncio.sleep(0.1)
            conn.close()

        await asyncio.gather(*[one() for _ in range(self.workers)])

    def summary(self):
        out = {}
        for p, v in self.by_phase.items():
            out[p] = {"ok": v["ok"], "failed": v["failed"], "status": v["status"], "p50_ms": percentile(v["ms"], 0.5),
                      "p99_ms": percentile(v["ms"], 0.99), "max_ms": percentile(v["ms"], 1.0)}
        return out


async def chaos_redis(args, work, tokens, ex):
    res = {}
    redis = Redis(work)
    redis.start()
    svc = Service(work, "chaos-redis", redis_url=redis.url).start()
    phase = {"now": "before"}
    reqs = [r for k, r in ex.items() if k.startswith("order-sign")]
    load = Load(Client(svc, tokens), reqs, 6, lambda: phase["now"], pace=0.005)
    third = (6 if args.quick else 20)
    runner = asyncio.create_task(load.run())
    await asyncio.sleep(third)
    redis.kill()
    phase["now"] = "down"
    t_down = time.monotonic()
    await asyncio.sleep(third)
    redis.start()
    phase["now"] = "after"
    t_up = time.monotonic()
    await asyncio.sleep(third)
    load.stop.set()
    await runner
    await load.settle(30)
    entries = redis.cli("XLEN", "offramp-rel:{feedback}:stream").strip()
    lost = len(load.acked - stream_cards(redis))
    s = load.summary()
    hook_failed = sum(sum(v["failed"].values()) for v in s.values())
    check(res, "redis_kill", hook_failed == 0 and lost == 0 and not load.pending and not load.fb_other,
          down_s=round(t_up - t_down, 1), hooks=s, hook_failures=hook_failed,
          feedback_sent=load.fb_sent, feedback_acked=len(load.acked), feedback_503_retried=load.fb_503,
          feedback_never_acked=len(load.pending), feedback_other_status=load.fb_other,
          stream_entries=int(entries or 0), lost_acknowledged=lost, rss_mb=svc.rss_mb())
    svc.stop()
    redis.stop()
    return res


async def chaos_fhir(args, work, tokens, ex, fhir):
    res = {}
    faults = [None, "slow/300", "slow/3000", "500", "garbage", "hang", "401", "404", None]
    bases = [fhir.base(f) for f in faults]
    svc = Service(work, "chaos-fhir", fhir=sorted(set(bases))).start()
    base_req = ex["order-sign-opioid-with-benzo"]
    loaded = fhir.load(prefetched_resources(base_req))
    phase = {"i": 0}
    names = [f or "ok" for f in faults]
    names[-1] = "ok-again"
    current = {"reqs": [fetch_mode(base_req, bases[0])]}

    class Rotating(list):
        def __getitem__(self, i):
            return current["reqs"][0]

        def __len__(self):
            return 1

    # A fault leaves no history to read: 412 is the CDS Hooks answer for data the service could
    # not obtain (as with no fhirServer at all); anything else, or a late answer, is a failure.
    load = Load(Client(svc, tokens), Rotating(), 8, lambda: names[phase["i"]], feedback=False,
                allowed=lambda p: (200,) if p in ("ok", "slow/300", "ok-again") else (200, 412))
    runner = asyncio.create_task(load.run())
    step = 3 if args.quick else 10
    for i, base in enumerate(bases):
        phase["i"] = i
        current["reqs"] = [fetch_mode(base_req, base)]
        await asyncio.sleep(step)
    load.stop.set()
    await runner
    s = load.summary()
    failed = sum(sum(v["failed"].values()) for v in s.values())
    deadline_ms = 2000
    slowest = max((v["max_ms"] or 0) for v in s.values())
    check(res, "fhir_faults", failed == 0 and slowest < deadline_ms + 1500,
          loaded_resources=loaded, deadline_ms=deadline_ms, phases=s, failures=failed,
          slowest_ms=slowest, rss_mb=svc.rss_mb())
    svc.stop()
    return res


def stream_cards(redis):
    """The card ids in the feedback stream."""
    out = redis.cli("XRANGE", "offramp-rel:{feedback}:stream", "-", "+").split("\n")
    return {out[i + 1] for i, line in enumerate(out) if line == "card" and i + 1 < len(out)}


async def chaos_sigterm(args, work, tokens, ex, fhir):
    """SIGTERM under load (hook calls, some waiting on a slow FHIR server, and feedback). The load
    balancer is modelled by a poller of /readyz: once it answers 503 no new request is started.
    Every request that was sent must be answered, and every acknowledged feedback be in Redis."""
    res = {}
    grace_ms = 1500
    slow = fhir.base("slow/1500")
    redis = Redis(work)
    redis.start()
    svc = Service(work, "chaos-sigterm", fhir=[slow], redis_url=redis.url,
                  server={"shutdown_grace_ms": grace_ms}).start()
    client = Client(svc, tokens)
    reqs = [fresh(r) for k, r in ex.items() if k.startswith("order-")]
    slow_req = fetch_mode(ex["order-sign-opioid-with-benzo"], slow)
    ready = {"ok": True, "flipped_at": None}
    counts = {"sent": 0, "answered": 0, "lost": [], "after_term": 0, "in_flight_answered": 0,
              "feedback_acked": set(), "feedback_refused": []}
    term = {"at": None}
    inflight, at_term = set(), set()

    async def poller():
        c = Conn(svc.port)
        while ready["ok"]:
            try:
                st, _, _ = await c.request("GET", "/readyz", timeout=5)
            except (Closed, asyncio.TimeoutError, OSError):
                st = None
            if st != 200 and term["at"]:
                ready["ok"] = False
                ready["flipped_at"] = time.monotonic() - term["at"]
            await asyncio.sleep(0.1)
        c.close()

    async def send(key, fn):
        inflight.add(key)
        counts["sent"] += 1
        if term["at"]:
            counts["after_term"] += 1
        try:
            st, _, b = await fn()
        except (Closed, asyncio.TimeoutError, OSError) as e:
            st, b = type(e).__name__, b""
        inflight.discard(key)
        if st == 200:
            counts["answered"] += 1
            counts["in_flight_answered"] += key in at_term
        else:
            counts["lost"].append(st)
        return st, b

    async def worker(w):
        conn = Conn(svc.port)
        i = 0
        while ready["ok"]:
            i += 1
            req = fresh(slow_req if (w == 0 and i % 2) else reqs[(w + i) % len(reqs)])
            st, b = await send((w, i, "hook"), lambda: client.hook(conn, req))
            cards = json.loads(b).get("cards", []) if st == 200 else []
            if cards and ready["ok"]:
                item = feedback_item(cards[0]["uuid"], w * 100000 + i)
                st, _ = await send((w, i, "feedback"),
                                   lambda: client.feedback(conn, "offramp-order-sign", [item]))
                if st == 200:
                    counts["feedback_acked"].add(item["card"])
        conn.close()

    tasks = [asyncio.create_task(poller())] + [asyncio.create_task(worker(w)) for w in range(6)]
    await asyncio.sleep(3 if args.quick else 10)
    at_term |= inflight
    term["at"] = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    await asyncio.gather(*tasks)
    code = await asyncio.to_thread(svc.proc.wait, 30)
    exit_s = round(time.monotonic() - term["at"], 2)
    svc.logf.close()
    lost_feedback = len(counts["feedback_acked"] - stream_cards(redis))
    redis.stop()
    check(res, "sigterm", not counts["lost"] and code == 0 and counts["in_flight_answered"] == len(at_term)
          and lost_feedback == 0,
          grace_ms=grace_ms, sent=counts["sent"], answered=counts["answered"], lost=len(counts["lost"]),
          lost_detail=counts["lost"][:10], in_flight_at_sigterm=len(at_term),
          in_flight_answered=counts["in_flight_answered"], sent_after_sigterm=counts["after_term"],
          feedback_acked=len(counts["feedback_acked"]), feedback_lost=lost_feedback,
          readyz_503_after_s=round(ready["flipped_at"] or -1, 2), exit_code=code, exited_after_s=exit_s)
    return res


async def chaos(args, work, tokens, ex):
    res = {}
    which = args.chaos or ["redis", "fhir", "sigterm"]
    if "redis" in which:
        res.update(await chaos_redis(args, work, tokens, ex))
    fhir = Fhir()
    try:
        if "fhir" in which:
            res.update(await chaos_fhir(args, work, tokens, ex, fhir))
        if "sigterm" in which:
            res.update(await chaos_sigterm(args, work, tokens, ex, fhir))
    finally:
        fhir.stop()
    return res


# ---------------------------------------------------------------------------------------------
# soak

async def soak(args, work, tokens, ex):
    res = {}
    duration = args.soak_seconds or (60 if args.quick else 600)
    # The production configuration: the Redis store (the memory store keeps up to 100,000
    # feedback items by design, which would be growth by definition). Not fsynced: the soak is
    # about the service's memory, and an fsync per write on a busy CI disk can pass the 150 ms
    # Redis timeout (the chaos runs are the durable ones).
    redis = Redis(work, durable=False)
    redis.start()
    svc = Service(work, "soak", redis_url=redis.url).start()
    client = Client(svc, tokens)
    reqs = list(ex.values())
    stop = asyncio.Event()
    counts = {}
    samples = []

    def count(kind, st):
        k = f"{kind} {st}"
        counts[k] = counts.get(k, 0) + 1

    async def mixed(w):
        conn = Conn(svc.port)
        rnd = random.Random(w)
        calendars = []
        while not stop.is_set():
            roll = rnd.random()
            try:
                if roll < 0.6:
                    st, _, b = await client.hook(conn, fresh(rnd.choice(reqs)))
                    count("hook", st)
                    if st == 200:
                        for card in json.loads(b).get("cards", []):
                            for link in card.get("links", []):
                                if "/calendar/" in link.get("url", ""):
                                    calendars.append(link["url"].split(svc.base, 1)[-1])
                            if rnd.random() < 0.5:
                                st2, _, _ = await client.feedback(conn, "offramp-order-sign",
                                                                  [feedback_item(card["uuid"], rnd.randrange(1 << 30))])
                                count("feedback", st2)
                elif roll < 0.7 and calendars:
                    st, _, _ = await conn.request("GET", calendars.pop(0))
                    count("calendar", st)
                elif roll < 0.8:
                    st, _, _ = await conn.request("GET", "/cds-services")
                    count("discovery", st)
                elif roll < 0.85:
                    st, _, _ = await conn.request("POST", "/cds-services/offramp-order-sign", b"{}",
                                                  {"Authorization": "Bearer not-a-token",
                                                   "Content-Type": "application/json"})
                    count("bad token", st)
                elif roll < 0.9:
                    st, _, _ = await client.raw_hook(conn, "/cds-services/offramp-order-sign", b'{"hook":')
                    count("bad body", st)
                else:
                    st, _, _ = await conn.request("GET", "/readyz")
                    count("readyz", st)
            except (Closed, asyncio.TimeoutError) as e:
                count("error", type(e).__name__)
            await asyncio.sleep(0.01)
        conn.close()

    async def sampler():
        t0 = time.monotonic()
        while not stop.is_set():
            samples.append((round(time.monotonic() - t0, 1), svc.rss_mb(), svc.fds()))
            await asyncio.sleep(2 if args.quick else 5)

    workers = [asyncio.create_task(mixed(w)) for w in range(8)]
    s = asyncio.create_task(sampler())
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*workers, s)
    samples.append((duration, svc.rss_mb(), svc.fds()))
    # Flat: the last third against the middle third (the first third is warm-up: the bounded
    # caches fill).
    n = len(samples)
    mid = [x[1] for x in samples[n // 3: 2 * n // 3]]
    last = [x[1] for x in samples[2 * n // 3:]]
    growth = round(statistics.mean(last) - statistics.mean(mid), 1)
    fds = [x[2] for x in samples]
    errors = sum(v for k, v in counts.items() if k.startswith("error") or k.endswith(" 500"))
    unexpected = {k: v for k, v in counts.items()
                  if not any(k == f"{a} {b}" for a, b in [("hook", 200), ("feedback", 200), ("calendar", 200),
                                                          ("discovery", 200), ("bad token", 401),
                                                          ("bad body", 400), ("readyz", 200)])}
    total = sum(counts.values())
    check(res, "soak", not unexpected and growth < 10 and max(fds) - min(fds) <= 16,
          seconds=duration, requests=total, rps=round(total / duration, 1), by_kind=counts,
          unexpected=unexpected, errors=errors, rss_mb_first=samples[0][1], rss_mb_mid=round(statistics.mean(mid), 1),
          rss_mb_last=round(statistics.mean(last), 1), rss_growth_last_vs_mid_mb=growth,
          rss_mb_max=max(x[1] for x in samples), fds_min=min(fds), fds_max=max(fds),
          samples=samples)
    svc.stop()
    redis.stop()
    return res


# ---------------------------------------------------------------------------------------------
# docs

def markdown():
    """The generated part of docs/reliability.md: every results file there is."""
    out = []
    for name in ("abuse", "chaos", "soak", "schemathesis", "fuzz-long"):
        f = RESULTS / f"{name}.json"
        if not f.exists():
            continue
        data = json.loads(f.read_text())
        out.append(f"### {name} ({data.get('mode', data.get('sanitizer', ''))}, {data.get('date', '')}, commit {data.get('commit', '?')})\n")
        if name.startswith("fuzz"):
            out.append("| target | seconds | execs | execs/s | cov | ft | corpus | crashes |\n|---|---|---|---|---|---|---|---|")
            for t, v in data.get("targets", {}).items():
                out.append(f"| {t} | {v.get('seconds')} | {v.get('execs')} | {v.get('exec_per_s')} | {v.get('cov')} | "
                           f"{v.get('ft')} | {v.get('corpus_files')} | {v.get('crashes')} |")
        elif name == "schemathesis":
            keep = {k: v for k, v in data.items() if k not in ("failures",)}
            out.append("```json\n" + json.dumps(keep, indent=1)[:4000] + "\n```")
        else:
            out.append("| check | ok | figures |\n|---|---|---|")
            for k, v in data.get("checks", {}).items():
                figs = {a: b for a, b in v.items() if a not in ("ok", "samples", "hooks", "phases", "by_kind")}
                ok = "—" if "ok" not in v else ("yes" if v["ok"] else "**NO**")
                out.append(f"| {k} | {ok} | `{json.dumps(figs)}` |")
                for sub in ("hooks", "phases"):
                    if sub in v:
                        out.append(f"| ↳ {k} by phase | | `{json.dumps(v[sub])}` |")
        out.append("")
    return "\n".join(out)


def update_docs():
    text = DOC.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    a, b = text.index(start) + len(start), text.index(end)
    DOC.write_text(text[:a] + "\n" + markdown() + "\n" + text[b:])
    log(f"updated {DOC.relative_to(ROOT)}")


def commit():
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


async def main_async(args):
    RESULTS.mkdir(parents=True, exist_ok=True)
    # 10,000 client sockets (and the server, which inherits this) need more than a default 1024.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 16384:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    work = Path(tempfile.mkdtemp(prefix="offramp-reliability-"))
    try:
        kit("keys", work)
        tokens = Tokens(work)
        ex = examples()
        for name, fn in (("abuse", abuse), ("chaos", chaos), ("soak", soak)):
            if args.only and name not in args.only:
                continue
            log(f"== {name}")
            t = time.monotonic()
            checks = await fn(args, work, tokens, ex)
            out = {"mode": "quick" if args.quick else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "commit": commit(), "seconds": round(time.monotonic() - t, 1), "checks": checks}
            (RESULTS / f"{name}{args.suffix}.json").write_text(json.dumps(out, indent=1) + "\n")
    finally:
        for p in PROCS:
            if p.poll() is None:
                p.kill()
                p.wait()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the short versions (CI)")
    p.add_argument("--only", type=lambda s: s.split(","), help="abuse,chaos,soak")
    p.add_argument("--soak-seconds", type=int, help="soak duration (default 600, 60 with --quick)")
    p.add_argument("--chaos", type=lambda s: s.split(","), help="redis,fhir,sigterm (default all)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, configs)")
    p.add_argument("--suffix", default="", help="results file name suffix, e.g. -quick")
    p.add_argument("--update-docs", action="store_true", help="write the results into docs/reliability.md")
    p.add_argument("--docs-only", action="store_true", help="only regenerate docs/reliability.md")
    args = p.parse_args()
    if not args.docs_only:
        asyncio.run(main_async(args))
    if args.update_docs or args.docs_only:
        update_docs()
    if FAILURES:
        log(f"FAILED: {', '.join(FAILURES)}")
        sys.exit(1)
    log("all checks passed")


if __name__ == "__main__":
    main()
