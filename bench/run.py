#!/usr/bin/env python3
"""The benchmark run behind `bench/run` (which builds first). Everything binds 127.0.0.1, every
load run is bounded in time, and every process started here is stopped before the next run.

Each load run: a 2 s warm-up, then `--duration` seconds of wrk at 64 connections posting the
order-sign request with a 300-record prefetched history, every request with its own pre-minted
JWT. Reported per run: throughput, latency percentiles, failed requests, the server's CPU time per
request (from /proc, steadier than wall time on a shared machine) and its peak RSS (VmHWM).
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
ISS = "https://ehr.bench.invalid"
HOOK_PATH = "/cds-services/offramp-order-sign"
NODE_PATH = "/cds-services/cms-price-check"
CONNECTIONS = 64
WRK_THREADS = 2
WARMUP_S = 2

# The goals of issue 9; each row of the report says whether the run met it.
GOALS = {
    "floor_share_es384": ("Full path / floor throughput, ES384", ">=", 0.75),
    "floor_share_instructions": ("Full path / floor, instructions per request (callgrind, ES384)", ">=", 0.75),
    "vs_node_rps_es384": ("Throughput vs Node sandbox, ES384 (offramp verifies, Node does not)", ">=", 1.5),
    "vs_node_rps_rs384": ("Throughput vs Node sandbox, RS384", ">=", 3.0),
    "vs_node_p99_es384": ("p99 latency vs Node sandbox, ES384", "<=", 0.2),
    "vs_node_p99_rs384": ("p99 latency vs Node sandbox, RS384", "<=", 0.2),
    "vs_node_rss": ("Peak RSS vs Node sandbox", "<=", 0.25),
    "p99_ms_es384": ("p99 at 64 connections, ES384, memory store (ms)", "<", 5.0),
    "p99_ms_rs384": ("p99 at 64 connections, RS384, memory store (ms)", "<", 5.0),
    "rss_mb": ("Peak RSS under load, memory store (MB)", "<", 50.0),
    "rss_mb_redis": ("Peak RSS under load, Redis store (MB)", "<", 50.0),
    "cold_start_ms": ("Cold start to first answer, median of 5 (ms)", "<", 200.0),
    "scaling_linearity": ("Time per record at 20,000 / at 1,000 (about linear: <= 1.5)", "<=", 1.5),
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.01)
    raise RuntimeError(f"nothing listening on {port} after {timeout} s")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime, fields 14 and 15 of the whole line, all threads included.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def kit(*args):
    subprocess.run([str(RELEASE / "benchkit"), *map(str, args)], check=True)


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.runs = {}
        self.rounds = {}
        self.notes = []
        kit("keys", work)
        kit("body", 300, work / "body.json")
        kit("body", 300, work / "body-node.json", "--selections")
        self.jwks = work / "jwks.json"
        self.minted = 0

    def tokens(self, alg, n, aud):
        self.minted += 1
        out = self.work / f"tokens-{self.minted}.txt"
        kit("tokens", self.work, alg, n, aud, out)
        return out

    def wrk(self, port, path, body, tokens, duration, conns, threads, wrap):
        out = self.work / "wrk.json"
        env = dict(os.environ, BENCH_BODY=str(body), BENCH_TOKENS=str(tokens), BENCH_PATH=path,
                   BENCH_THREADS=str(threads), BENCH_OUT=str(out), BENCH_WRAP="1" if wrap else "0")
        subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}s", "--timeout", "10s",
                        "-s", str(ROOT / "bench/wrk/cds.lua"), f"http://127.0.0.1:{port}"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())

    def load(self, name, proc, port, alg, path=HOOK_PATH, body=None, verifies=True,
             conns=CONNECTIONS, threads=WRK_THREADS, duration=None):
        """Warm-up, then the measured run; tokens for it are minted after the warm-up from its
        rate, so there are enough and each is used once."""
        body = body or self.work / "body.json"
        duration = duration or self.args.duration
        aud = f"http://127.0.0.1:{port}{path}"
        warm_tokens = self.tokens(alg, 3000, aud)
        warm = self.wrk(port, path, body, warm_tokens, WARMUP_S, conns, threads, wrap=True)
        rate = warm["requests"] / (warm["duration_us"] / 1e6)
        if verifies:
            tokens = self.tokens(alg, int(rate * duration * 1.5) + 2000, aud)
        else:
            tokens = warm_tokens
        cpu0 = cpu_seconds(proc.pid)
        r = self.wrk(port, path, body, tokens, duration, conns, threads, wrap=not verifies)
        cpu = cpu_seconds(proc.pid) - cpu0
        seconds = r["duration_us"] / 1e6
        failed = sum(r["errors"].values())
        ok = r["requests"] - r["errors"]["status"]
        lat = r["latency_us"]
        row = {
            "alg": alg,
            "connections": conns,
            "seconds": round(seconds, 2),
            "requests": r["requests"],
            "failed": failed,
            "tokens_ran_out": r["tokens_exhausted"],
            # Answered requests only: a fast refusal must not count as throughput.
            "rps": round(ok / seconds, 1),
            "p50_ms": lat["p50"] / 1000,
            "p90_ms": lat["p90"] / 1000,
            "p99_ms": lat["p99"] / 1000,
            "p999_ms": lat["p999"] / 1000,
            "cpu_us_per_request": round(cpu / max(ok, 1) * 1e6, 1),
            "peak_rss_mb": round(status_kb(proc.pid, "VmHWM") / 1024, 1),
        }
        if failed or r["tokens_exhausted"]:
            self.notes.append(f"{name}: {failed} failed requests, {r['tokens_exhausted']} without a fresh token")
        self.runs[name] = row
        self.rounds.setdefault(name, []).append(row)
        log(f"{name}: {row['rps']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, "
            f"{row['cpu_us_per_request']} us CPU/request, peak RSS {row['peak_rss_mb']} MB, failed {failed}")
        return row

    def offramp_config(self, port, redis_url=None, fhir_base=None):
        lines = [
            "[server]",
            f'bind = "127.0.0.1:{port}"',
            f'public_base_url = "http://127.0.0.1:{port}"',
            "[[auth.issuers]]",
            f'iss = "{ISS}"',
            'algorithms = ["ES384", "RS384"]',
            f'jwks_file = "{self.jwks}"',
            f"fhir_servers = {json.dumps([fhir_base] if fhir_base else [])}",
            "[fhir]",
            "allow_plain_http = true",
        ]
        if redis_url:
            lines += ["[store]", 'backend = "redis"', f'patient_key = "{"bench-patient-key-" * 3}"',
                      "[store.redis]", f'url = "{redis_url}"', 'key_prefix = "offramp-bench:"']
        cfg = self.work / f"offramp-{port}.toml"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def offramp(self, cfg, port):
        logf = open(self.work / f"offramp-{port}.log", "ab")
        proc = subprocess.Popen([str(RELEASE / "offramp"), "serve", "--config", str(cfg)],
                                stdout=logf, stderr=logf, cwd=self.work)
        wait_port(port, proc)
        return proc

    def offramp_runs(self, label, redis_url=None):
        for alg in ("ES384", "RS384"):
            port = free_port()
            proc = self.offramp(self.offramp_config(port, redis_url), port)
            try:
                self.load(f"offramp {label} {alg}", proc, port, alg)
            finally:
                stop(proc)

    def floor_runs(self):
        for alg in ("ES384", "RS384"):
            port = free_port()
            proc = subprocess.Popen([str(RELEASE / "floor"), f"127.0.0.1:{port}", str(self.jwks), ISS,
                                     f"http://127.0.0.1:{port}"])
            try:
                wait_port(port, proc)
                self.load(f"floor {alg}", proc, port, alg)
            finally:
                stop(proc)

    def cold_start(self):
        """From exec to the first 200 on a real order-sign call, five fresh processes."""
        times = []
        body = (self.work / "body.json").read_bytes().replace(
            b"00000000-0000-4000-8000-000000000000", b"c0ffee00-0000-4000-8000-000000000001")
        for _ in range(5):
            port = free_port()
            cfg = self.offramp_config(port)
            tokens = self.tokens("ES384", 1, f"http://127.0.0.1:{port}{HOOK_PATH}").read_text().split()
            logf = open(self.work / "cold.log", "ab")
            t0 = time.perf_counter()
            proc = subprocess.Popen([str(RELEASE / "offramp"), "serve", "--config", str(cfg)],
                                    stdout=logf, stderr=logf, cwd=self.work)
            try:
                while True:
                    if time.perf_counter() - t0 > 10 or proc.poll() is not None:
                        raise RuntimeError("offramp did not answer within 10 s")
                    try:
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                        c.request("POST", HOOK_PATH, body, {"Authorization": f"Bearer {tokens[0]}",
                                                            "Content-Type": "application/json"})
                        status = c.getresponse().status
                        c.close()
                    except ConnectionRefusedError:
                        time.sleep(0.001)
                        continue
                    if status != 200:
                        raise RuntimeError(f"cold start answered {status}")
                    times.append((time.perf_counter() - t0) * 1000)
                    break
            finally:
                stop(proc)
        self.cold = {"runs_ms": [round(t, 1) for t in times], "median_ms": round(statistics.median(times), 1)}
        log(f"cold start: {self.cold}")

    def instructions(self):
        """Instructions per request under callgrind: the same count for the same binary and
        input whatever else the machine does, so the floor share is also given this way."""
        if not shutil.which("valgrind"):
            self.notes.append("valgrind not found: instruction counts not measured")
            return
        body = (self.work / "body.json").read_bytes()
        out = {}
        for name in ("offramp", "floor"):
            totals = []
            for n in (10, 40):
                port = free_port()
                cg = self.work / f"callgrind-{name}-{n}.out"
                server = ([str(RELEASE / "offramp"), "serve", "--config", str(self.offramp_config(port))]
                          if name == "offramp" else
                          [str(RELEASE / "floor"), f"127.0.0.1:{port}", str(self.jwks), ISS, f"http://127.0.0.1:{port}"])
                proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}", *server],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.work)
                try:
                    wait_port(port, proc, timeout=120)
                    tokens = self.tokens("ES384", n, f"http://127.0.0.1:{port}{HOOK_PATH}").read_text().split()
                    for i, t in enumerate(tokens):
                        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                        c.request("POST", HOOK_PATH, body.replace(b"00000000-0000-4000-8000-000000000000",
                                                                  f"c0ffee00-0000-4000-8000-{i:012x}".encode()),
                                  {"Authorization": f"Bearer {t}", "Content-Type": "application/json"})
                        r = c.getresponse()
                        r.read()
                        if r.status != 200:
                            raise RuntimeError(f"{name} under callgrind answered {r.status}")
                finally:
                    stop(proc)
                summary = [ln for ln in cg.read_text().splitlines() if ln.startswith("summary:")]
                totals.append(int(summary[0].split()[1]))
            out[name] = round((totals[1] - totals[0]) / 30)
        out["floor_share"] = round(out["floor"] / out["offramp"], 3)
        self.instr = out
        log(f"instructions per request (ES384): {out}")

    def redis(self):
        port = free_port()
        proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        wait_port(port, proc)
        return proc, f"redis://127.0.0.1:{port}/0"

    def medians(self):
        """Each load run is repeated in rounds, interleaved with the others, so a slow spell of a
        shared machine hits all of them; each is reported as its median round by throughput."""
        for name, rows in self.rounds.items():
            ranked = sorted(rows, key=lambda r: r["rps"])
            row = dict(ranked[len(ranked) // 2])
            row["rps_rounds"] = [r["rps"] for r in rows]
            self.runs[name] = row

    def node_install(self, checkout):
        """The Node sandbox from a copy of the given checkout, installed with npm; its lockfile's
        `fs` placeholder, no longer on the registry, is overridden with an empty local package."""
        src = Path(checkout).resolve()
        dest = self.work / "sandbox-cds-services"
        shutil.copytree(src, dest, ignore=shutil.ignore_patterns(".git", "node_modules"))
        placeholder = self.work / "fs-placeholder"
        placeholder.mkdir()
        (placeholder / "package.json").write_text('{"name": "fs", "version": "0.0.1-security"}\n')
        pkg = json.loads((dest / "package.json").read_text())
        pkg["overrides"] = {"fs": f"file:{placeholder}"}
        (dest / "package.json").write_text(json.dumps(pkg, indent=2))
        log("npm install (Node sandbox)")
        subprocess.run(["npm", "install", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
                       cwd=dest, check=True, stdout=subprocess.DEVNULL)
        self.sandbox = dest

    def node(self):
        dest = self.sandbox
        port = free_port()
        proc = subprocess.Popen(["node", str(ROOT / "bench/node-sandbox.js"), str(dest), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port, proc)
            # Its answer must be a real card, not an error: the price check read the draft.
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            body = (self.work / "body-node.json").read_bytes()
            c.request("POST", NODE_PATH, body, {"Content-Type": "application/json"})
            answer = json.loads(c.getresponse().read())
            if not answer.get("cards"):
                raise RuntimeError(f"the Node sandbox answered no card: {answer}")
            self.load("node sandbox", proc, port, "ES384", path=NODE_PATH,
                      body=self.work / "body-node.json", verifies=False)
        finally:
            stop(proc)

    def fetch_mode(self):
        """Added latency when offramp fetches the history from the FHIR test server instead of
        reading it from prefetch; one connection, so it is latency, not queueing."""
        token = "bench-fhir-token"
        server = subprocess.Popen(["node", "server.mjs", "--token", token],
                                  cwd=ROOT / "tests/support/fhir-server", stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            line = server.stdout.readline().decode().strip()
            fport = int(line.removeprefix("LISTENING "))
            base = f"http://127.0.0.1:{fport}/fhir"
            req = json.loads((self.work / "body.json").read_text())
            patient = req["context"]["patientId"]
            resources = []
            for value in req["prefetch"].values():
                items = [e["resource"] for e in value.get("entry", [])] if value.get("resourceType") == "Bundle" else [value]
                for r in items:
                    if r["resourceType"] != "Patient":
                        r.setdefault("subject", {"reference": f"Patient/{patient}"})
                    resources.append(r)
            c = http.client.HTTPConnection("127.0.0.1", fport, timeout=30)
            c.request("POST", "/_admin/load", json.dumps(resources), {"Content-Type": "application/json"})
            loaded = json.loads(c.getresponse().read()).get("loaded")
            del req["prefetch"]
            req["fhirServer"] = base
            req["fhirAuthorization"] = {"access_token": token, "token_type": "Bearer", "expires_in": 300,
                                        "scope": "patient/*.read", "subject": "offramp"}
            fetch_body = self.work / "body-fetch.json"
            fetch_body.write_text(json.dumps(req))
            port = free_port()
            proc = self.offramp(self.offramp_config(port, fhir_base=base), port)
            try:
                cards = {}
                for mode, body in (("prefetch", self.work / "body.json"), ("fetch", fetch_body)):
                    tok = self.tokens("ES384", 1, f"http://127.0.0.1:{port}{HOOK_PATH}").read_text().split()[0]
                    h = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    h.request("POST", HOOK_PATH, body.read_bytes().replace(
                        b"00000000-0000-4000-8000-000000000000", f"c0ffee00-0000-4000-8000-00000000000{len(cards)}".encode()),
                        {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
                    cards[mode] = sorted(c["summary"] for c in json.loads(h.getresponse().read())["cards"])
                rows = {}
                for mode, body in (("prefetch", self.work / "body.json"), ("fetch", fetch_body)):
                    rows[mode] = self.load(f"offramp {mode} 1 connection", proc, port, "ES384", body=body,
                                           conns=1, threads=1, duration=max(3, self.args.duration // 2))
            finally:
                stop(proc)
        finally:
            server.stdin.close()
            stop(server)
        self.fetch = {
            "resources_on_server": loaded,
            "same_cards": cards["prefetch"] == cards["fetch"],
            "added_p50_ms": round(rows["fetch"]["p50_ms"] - rows["prefetch"]["p50_ms"], 2),
            "added_p99_ms": round(rows["fetch"]["p99_ms"] - rows["prefetch"]["p99_ms"], 2),
        }
        if not self.fetch["same_cards"]:
            self.notes.append(f"fetch mode gave other cards: {cards}")
        log(f"fetch mode: {self.fetch}")

    def scaling(self):
        log("criterion: evaluation time vs history size")
        args = ["cargo", "bench", "--locked", "--bench", "evaluate", "--", "scaling",
                "--warm-up-time", "1", "--measurement-time", "3" if self.args.quick else "8"]
        subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        out = {}
        for d in sorted((ROOT / "target/criterion/scaling").iterdir()):
            for n in d.iterdir():
                est = n / "new" / "estimates.json"
                if n.name.isdigit() and est.exists():
                    mean = json.loads(est.read_text())["mean"]["point_estimate"] / 1e3
                    out[int(n.name)] = {"mean_us": round(mean, 1), "us_per_record": round(mean / int(n.name), 3)}
        self.scale = dict(sorted(out.items()))
        log(f"scaling: {self.scale}")


def machine():
    def cmd(*c):
        try:
            p = subprocess.run(c, capture_output=True, text=True, timeout=10)
            return (p.stdout or p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "not found"

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "load_average_at_start": os.getloadavg()[0],
        "rustc": cmd("rustc", "-V"),
        "node": cmd("node", "-v"),
        "wrk": cmd("wrk", "-v"),
        "redis": cmd("redis-server", "--version"),
        "commit": cmd("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"),
    }


def ratios(b):
    r = b.runs
    out = {}

    def put(key, num, den, field="rps"):
        if num in r and den in r and r[den][field]:
            out[key] = round(r[num][field] / r[den][field], 3)

    put("floor_share_es384", "offramp memory ES384", "floor ES384")
    if getattr(b, "instr", None):
        out["floor_share_instructions"] = b.instr["floor_share"]
    put("floor_share_rs384", "offramp memory RS384", "floor RS384")
    for alg in ("ES384", "RS384"):
        put(f"vs_node_rps_{alg.lower()}", f"offramp memory {alg}", "node sandbox")
        put(f"vs_node_p99_{alg.lower()}", f"offramp memory {alg}", "node sandbox", "p99_ms")
    if "node sandbox" in r:
        peak = max(r[f"offramp memory {a}"]["peak_rss_mb"] for a in ("ES384", "RS384"))
        out["vs_node_rss"] = round(peak / r["node sandbox"]["peak_rss_mb"], 3)
    for alg in ("ES384", "RS384"):
        out[f"p99_ms_{alg.lower()}"] = r[f"offramp memory {alg}"]["p99_ms"]
    out["rss_mb"] = max(r[f"offramp memory {a}"]["peak_rss_mb"] for a in ("ES384", "RS384"))
    out["rss_mb_redis"] = max(r[f"offramp redis {a}"]["peak_rss_mb"] for a in ("ES384", "RS384"))
    out["cold_start_ms"] = b.cold["median_ms"]
    if 1000 in b.scale and 20000 in b.scale:
        out["scaling_linearity"] = round(b.scale[20000]["us_per_record"] / b.scale[1000]["us_per_record"], 3)
    return out


def met(value, op, goal):
    return {"<": value < goal, "<=": value <= goal, ">=": value >= goal}[op]


def markdown(result):
    m = result["machine"]
    lines = [
        f"Run {m['date']} on {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, Linux {m['kernel']} "
        f"(load average {m['load_average_at_start']} at start); {m['rustc']}, Node {m['node']}, "
        f"{m['wrk']}, {m['redis']}; commit {m['commit']}. Load: wrk, {WRK_THREADS} threads, "
        f"{CONNECTIONS} connections, {result['duration_s']} s per run after a {WARMUP_S} s warm-up, "
        f"on the same 2 cores as the server; each load run is the median of {result['rounds']} interleaved "
        "rounds (req/s of every round in the JSON).",
        "",
        "| Goal | Result | Target | Met |",
        "|---|---|---|---|",
    ]
    for key, (label, op, goal) in GOALS.items():
        if key in result["ratios"]:
            v = result["ratios"][key]
            lines.append(f"| {label} | {v} | {op} {goal} | {'yes' if met(v, op, goal) else '**no**'} |")
        else:
            lines.append(f"| {label} | not run | {op} {goal} | - |")
    lines += ["", "| Run | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | failed | CPU us/request | peak RSS MB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["runs"].items():
        lines.append(f"| {name} | {r['rps']} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['p999_ms']} "
                     f"| {r['failed']} | {r['cpu_us_per_request']} | {r['peak_rss_mb']} |")
    lines += ["", "| History records | parse + evaluate (us) | us per record |", "|---|---|---|"]
    for n, s in result["scaling"].items():
        lines.append(f"| {n} | {s['mean_us']} | {s['us_per_record']} |")
    f = result["fetch_mode"]
    lines += ["", f"Fetch mode ({f['resources_on_server']} resources on the FHIR test server, one connection): "
              f"+{f['added_p50_ms']} ms at p50, +{f['added_p99_ms']} ms at p99 over prefetch; "
              f"same cards: {'yes' if f['same_cards'] else 'no'}."]
    if result["notes"]:
        lines += ["", "Notes:"] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sandbox", help="checkout of github:cds-hooks/sandbox-cds-services")
    ap.add_argument("--duration", type=int, default=8, help="seconds per measured run")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the load runs (median kept)")
    ap.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    ap.add_argument("--out", default=str(ROOT / "bench/results"))
    ap.add_argument("--only", help="comma-separated parts, for profiling work: "
                    "callgrind,cold,memory,redis,floor,node,fetch,scaling (the report needs them all)")
    ap.add_argument("--strict", action="store_true", help="exit 1 if any request failed (CI)")
    ap.add_argument("--update-docs", action="store_true", help="put the table in docs/benchmarks.md")
    args = ap.parse_args()
    if args.quick:
        args.duration = 3
        args.rounds = 1
    work = Path(tempfile.mkdtemp(prefix="offramp-bench-"))
    redis = None
    try:
        b = Bench(args, work)
        log(f"work dir {work}")
        parts = set(args.only.split(",")) if args.only else None

        def want(part):
            return parts is None or part in parts

        if want("cold"):
            b.cold_start()
        if want("callgrind"):
            b.instructions()
        if want("redis"):
            redis, url = b.redis()
        if want("node") and args.sandbox:
            b.node_install(args.sandbox)
        elif want("node"):
            b.notes.append("Node sandbox not run: pass --sandbox <checkout of cds-hooks/sandbox-cds-services>")
        for n in range(args.rounds):
            log(f"round {n + 1} of {args.rounds}")
            if want("memory"):
                b.offramp_runs("memory")
            if want("redis"):
                b.offramp_runs("redis", url)
            if want("floor"):
                b.floor_runs()
            if want("node") and args.sandbox:
                b.node()
        b.medians()
        if want("fetch"):
            b.fetch_mode()
        if want("scaling"):
            b.scaling()
        failed = [n for n in b.notes if "failed requests" in n]
        if args.strict and failed:
            print("\n".join(failed), file=sys.stderr)
            return 1
        if parts is not None:
            print(json.dumps({"runs": b.runs, "notes": b.notes}, indent=2))
            return 0
        result = {"machine": machine(), "duration_s": args.duration, "rounds": args.rounds, "runs": b.runs, "cold_start": b.cold,
                  "fetch_mode": b.fetch, "scaling": b.scale, "notes": b.notes,
                  "instructions_per_request": getattr(b, "instr", None)}
        result["ratios"] = ratios(b)
        result["goals"] = {k: {"label": label, "target": f"{op} {goal}", "value": result["ratios"].get(k),
                               "met": k in result["ratios"] and met(result["ratios"][k], op, goal)}
                           for k, (label, op, goal) in GOALS.items()}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
        table = markdown(result)
        (out / "latest.md").write_text(table)
        if args.update_docs:
            doc = ROOT / "docs/benchmarks.md"
            text = doc.read_text()
            start, end = "<!-- results:start -->", "<!-- results:end -->"
            head, rest = text.split(start, 1)
            doc.write_text(head + start + "\n" + table + end + rest.split(end, 1)[1])
        print(table)
        return 0
    finally:
        if redis:
            stop(redis)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
