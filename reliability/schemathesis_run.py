#!/usr/bin/env python3
"""Schema-driven API testing of offramp with schemathesis, against the committed openapi.json.

    python3 reliability/schemathesis_run.py --quick      # CI: bounded, a few minutes
    python3 reliability/schemathesis_run.py              # long: more examples, stateful phase
    python3 reliability/schemathesis_run.py --seed 7     # reproduce a run

What it does:
  1. makes target/reliability-venv from reliability/requirements.txt when missing or stale, and
     runs itself again inside it;
  2. builds target/release/offramp (cargo build --release --locked --bin offramp; --no-build
     skips it);
  3. in a temporary directory: an ES384 key pair and its JWKS file, and a configuration with that
     trusted issuer, a fixed server.public_base_url (so the JWT aud is predictable), an admin token
     and the memory store; starts `offramp serve --listen 127.0.0.1:0` and reads the address from
     its "listening" log line;
  4. runs `schemathesis run openapi.json --url http://127.0.0.1:PORT` with every check that
     applies, all generation modes (positive and negative), a fixed seed, and the hooks of
     reliability/schemathesis_hooks.py (a fresh JWT on every call, the admin token, the real
     example requests of cds-hooks/examples/requests as explicit examples);
  5. writes reliability/results/schemathesis.json and exits non-zero on any failure, any 5xx
     response, or a service that died.

Requests go to 127.0.0.1 only. The run is bounded by the examples per operation (quick 100, long
1000) and stops itself, failed, past a wall-clock limit (quick 15 min, long 60 min).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "target" / "reliability-venv"
REQUIREMENTS = ROOT / "reliability" / "requirements.txt"
RESULTS = ROOT / "reliability" / "results"
# schemathesis's own reports (ndjson events, JUnit) and the service's log of the last run.
WORK = ROOT / "target" / "schemathesis"
BINARY = ROOT / "target" / "release" / "offramp"
SCHEMA = ROOT / "openapi.json"
HOOKS = ROOT / "reliability" / "schemathesis_hooks.py"
CONFIG = ROOT / "reliability" / "schemathesis.toml"
EXAMPLES = ROOT / "cds-hooks" / "examples" / "requests"

ISSUER = "https://ehr.schemathesis.test"
# The URL EHRs use to reach the service; the JWT aud is this plus the endpoint's path. Not the
# listening address (a port picked at start), so the token's aud does not depend on the Host header.
PUBLIC_BASE = "http://offramp.schemathesis.test"
KID = "schemathesis-es384"

# Checks that do not apply to this API, each excluded by name with the reason. Everything else
# (`--checks all`) runs.
EXCLUDED_CHECKS: dict[str, str] = {}

MODES = {
    # CI: a bounded run, a few minutes on 2 shared cores.
    "quick": {"max_examples": 100, "phases": "examples,coverage,fuzzing", "wall_clock": 900},
    # Longer: ten times the examples, and the stateful phase (sequences of calls built from the
    # schema's links, where it has any).
    "long": {"max_examples": 1000, "phases": "examples,coverage,fuzzing,stateful", "wall_clock": 3600},
}


def log(msg: str) -> None:
    print(f"[schemathesis_run] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# 1. The virtual environment


def requirements_digest() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    stamp = VENV / ".requirements.sha256"
    digest = requirements_digest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return python
    log(f"installing {REQUIREMENTS.relative_to(ROOT)} into {VENV.relative_to(ROOT)}")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(REQUIREMENTS)],
        check=True,
    )
    stamp.write_text(digest + "\n")
    return python


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# --------------------------------------------------------------------------------------------
# 3. Keys, configuration, the service


def write_keys(tmp: Path) -> tuple[Path, Path]:
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file = tmp / "issuer-key.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    numbers = key.public_key().public_numbers()

    def b64(n: int) -> str:
        return base64.urlsafe_b64encode(n.to_bytes(48, "big")).rstrip(b"=").decode()

    jwks = {
        "keys": [
            {
                "kty": "EC",
                "crv": "P-384",
                "x": b64(numbers.x),
                "y": b64(numbers.y),
                "kid": KID,
                "alg": "ES384",
                "use": "sig",
            }
        ]
    }
    jwks_file = tmp / "issuer-jwks.json"
    jwks_file.write_text(json.dumps(jwks, indent=1))
    return key_file, jwks_file


def write_config(tmp: Path, jwks_file: Path, admin_token: str) -> Path:
    config = f"""# Written by reliability/schemathesis_run.py for one run.
[server]
public_base_url = "{PUBLIC_BASE}"

[[auth.issuers]]
iss = "{ISSUER}"
algorithms = ["ES384"]
jwks_file = "{jwks_file.name}"
# The generated fhirServer values are never contacted.
fhir_servers = []

[store]
backend = "memory"

[admin]
token = "{admin_token}"
"""
    path = tmp / "offramp.toml"
    path.write_text(config)
    return path


class Service:
    """offramp serve on 127.0.0.1 with a port picked at start; its log goes to a file."""

    def __init__(self, config: Path, log_file: Path) -> None:
        self.log_file = log_file
        self.proc = subprocess.Popen(
            [str(BINARY), "serve", "--config", str(config), "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        self.address: str | None = None
        self.lines = 0
        self.error_lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log_file.open("w") as out:
            for line in self.proc.stdout:
                out.write(line)
                self.lines += 1
                try:
                    event = json.loads(line)
                except ValueError:
                    if "panicked" in line:
                        self.error_lines.append(line.strip()[:500])
                    continue
                fields = event.get("fields", event)
                if self.address is None and fields.get("message") == "listening":
                    self.address = fields.get("address")
                    self._ready.set()
                if str(event.get("level", "")).upper() == "ERROR" or "panicked" in line:
                    self.error_lines.append(line.strip()[:500])
        self._ready.set()

    def wait_ready(self, timeout: float = 60) -> str:
        self._ready.wait(timeout)
        if self.address is None:
            self.stop()
            raise SystemExit(f"offramp did not report a listening address; see {self.log_file}")
        return self.address

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return self.proc.returncode


# --------------------------------------------------------------------------------------------
# 4.-5. schemathesis and the summary


def schemathesis_version(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import schemathesis; print(schemathesis.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _decode(body: object, limit: int = 1500) -> object:
    """A recorded body: text when it decodes, shortened."""
    import base64

    if isinstance(body, dict) and "$base64" in body:
        raw = base64.b64decode(body["$base64"])
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return f"<{len(raw)} bytes, not UTF-8>"
        return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    return body


def summarise_report(report_dir: Path) -> dict:
    """Per-check counts, test cases and distinct failures from schemathesis's ndjson events."""
    checks: dict[str, dict[str, int]] = {}
    failures: dict[tuple, dict] = {}
    operations: set[str] = set()
    cases = 0
    errors: list[dict] = []
    ndjson = report_dir / "events.ndjson"
    if not ndjson.exists():
        return {"checks": checks, "failures": [], "operations": [], "test_cases": 0, "errors": errors}
    for line in ndjson.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        for kind, body in event.items():
            if kind == "ScenarioFinished":
                recorder = body.get("recorder", {})
                label = recorder.get("label")
                if label and body.get("status") != "skip":
                    operations.add(label)
                cases += len(recorder.get("cases", {}))
                for case_id, case_checks in recorder.get("checks", {}).items():
                    for check in case_checks:
                        name = check.get("name")
                        status = str(check.get("status", "")).lower()
                        per = checks.setdefault(name, {"passed": 0, "failed": 0})
                        if status == "success":
                            per["passed"] += 1
                            continue
                        if status != "failure":
                            per[status] = per.get(status, 0) + 1
                            continue
                        per["failed"] += 1
                        inner = (check.get("failure_info") or {}).get("failure") or {}
                        key = (label, name, inner.get("title"), inner.get("message"))
                        if key in failures:
                            failures[key]["occurrences"] += 1
                            continue
                        case = (recorder.get("cases", {}).get(case_id) or {}).get("value", {})
                        interaction = recorder.get("interactions", {}).get(case_id) or {}
                        request = interaction.get("request") or {}
                        response = interaction.get("response") or {}
                        failures[key] = {
                            "operation": label,
                            "check": name,
                            "code": inner.get("code"),
                            "title": inner.get("title"),
                            "message": (inner.get("message") or "")[:2000],
                            "phase": body.get("phase", {}).get("name") if isinstance(body.get("phase"), dict) else body.get("phase"),
                            "generation_mode": ((case.get("meta") or {}).get("generation") or {}).get("mode"),
                            "request": {
                                "method": request.get("method"),
                                "uri": request.get("uri"),
                                "content_type": (request.get("headers") or {}).get("Content-Type"),
                                "body": _decode(request.get("body")),
                            },
                            "response": {
                                "status": response.get("status_code"),
                                "headers": response.get("headers"),
                                "body": _decode(response.get("content")),
                            },
                            "occurrences": 1,
                        }
            elif kind == "NonFatalError":
                errors.append({"label": body.get("label"), "info": str(body.get("info"))[:2000]})
            elif kind == "FatalError":
                errors.append({"label": "fatal", "info": str(body.get("exception"))[:2000]})
    return {
        "checks": checks,
        "failures": list(failures.values()),
        "operations": sorted(operations),
        "test_cases": cases,
        "errors": errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the bounded CI run")
    parser.add_argument("--seed", type=int, default=20240601, help="schemathesis/hypothesis seed")
    parser.add_argument("--max-examples", type=int, help="per operation (overrides the mode's)")
    parser.add_argument(
        "--max-time",
        type=int,
        help="spend this many seconds (schemathesis repeats fuzzing until it is spent; default: stop "
        "after --max-examples per operation)",
    )
    parser.add_argument("--no-build", action="store_true", help="use target/release/offramp as it is")
    parser.add_argument("--workers", default="1", help="schemathesis workers (default 1: 2 shared cores)")
    parser.add_argument("--output", type=Path, default=RESULTS / "schemathesis.json")
    args = parser.parse_args()

    python = ensure_venv()
    if not in_venv():
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])

    mode_name = "quick" if args.quick else "long"
    mode = dict(MODES[mode_name])
    if args.max_examples:
        mode["max_examples"] = args.max_examples
    mode["max_time"] = args.max_time

    if not args.no_build:
        log("cargo build --release --locked --bin offramp")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "offramp"], cwd=ROOT, check=True)
    if not BINARY.exists():
        raise SystemExit(f"{BINARY} is missing: build it or drop --no-build")

    RESULTS.mkdir(parents=True, exist_ok=True)
    version = schemathesis_version(python)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="offramp-schemathesis-") as tmp_name:
        tmp = Path(tmp_name)
        key_file, jwks_file = write_keys(tmp)
        admin_token = os.urandom(24).hex()  # 48 characters
        config = write_config(tmp, jwks_file, admin_token)
        WORK.mkdir(parents=True, exist_ok=True)
        server_log = WORK / "offramp.log"
        service = Service(config, server_log)
        try:
            address = service.wait_ready()
            base_url = f"http://{address}"
            log(f"offramp listening on {base_url}; schemathesis {version}, mode {mode_name}, seed {args.seed}")
            report_dir = WORK / "report"
            shutil.rmtree(report_dir, ignore_errors=True)
            report_dir.mkdir(parents=True)
            stats_file = tmp / "hook-stats.json"
            cmd = [
                str(VENV / "bin" / "schemathesis"),
                "--config-file",
                str(CONFIG),
                "run",
                str(SCHEMA),
                "--url",
                base_url,
                "--checks",
                "all",
                *(["--exclude-checks", ",".join(EXCLUDED_CHECKS)] if EXCLUDED_CHECKS else []),
                "--mode",
                "all",
                "--phases",
                mode["phases"],
                "--max-examples",
                str(mode["max_examples"]),
                *(["--max-time", str(mode["max_time"])] if mode["max_time"] else []),
                "--seed",
                str(args.seed),
                "--workers",
                str(args.workers),
                "--generation-database",
                "none",
                "--request-timeout",
                "15",
                "--continue-on-failure",
                "--report",
                "ndjson,junit",
                "--report-dir",
                str(report_dir),
                "--report-ndjson-path",
                str(report_dir / "events.ndjson"),
                "--report-junit-path",
                str(report_dir / "junit.xml"),
                # The tokens are throw-away test keys: failures show the request as it was sent.
                "--output-sanitize",
                "false",
                "--no-color",
            ]
            env = {
                **os.environ,
                "SCHEMATHESIS_HOOKS": HOOKS.stem,
                "PYTHONPATH": os.pathsep.join([str(HOOKS.parent), os.environ.get("PYTHONPATH", "")]),
                "OFFRAMP_ST_KEY_FILE": str(key_file),
                "OFFRAMP_ST_KID": KID,
                "OFFRAMP_ST_ISS": ISSUER,
                "OFFRAMP_ST_PUBLIC_BASE": PUBLIC_BASE,
                "OFFRAMP_ST_ADMIN_TOKEN": admin_token,
                "OFFRAMP_ST_URL": base_url,
                "OFFRAMP_ST_EXAMPLES": str(EXAMPLES),
                "OFFRAMP_ST_STATS_FILE": str(stats_file),
            }
            log(" ".join(cmd[1:]))
            try:
                st = subprocess.run(cmd, cwd=tmp, env=env, timeout=mode["wall_clock"])
            except subprocess.TimeoutExpired:
                log(f"schemathesis still running after {mode['wall_clock']} s: stopped")
                st = subprocess.CompletedProcess(cmd, returncode=124)
            alive = service.alive()
        finally:
            exit_code = service.stop()
        duration = time.monotonic() - started
        summary = summarise_report(report_dir)
        stats = json.loads(stats_file.read_text()) if stats_file.exists() else {}

    responses = stats.get("responses", {})
    requests_total = sum(n for per in responses.values() for n in per.values())
    server_errors = sum(n for per in responses.values() for s, n in per.items() if int(s) >= 500)
    schema_violations = summary["checks"].get("response_schema_conformance", {}).get("failed", 0)
    failures = summary["failures"]
    valid_auth_refused = stats.get("valid_auth_refused", [])
    ok = (
        st.returncode == 0
        and bool(stats)  # the hooks ran (auth, examples, response counts)
        and not valid_auth_refused
        and not failures
        and server_errors == 0
        and schema_violations == 0
        and alive
        and not service.error_lines
        and not summary["errors"]
    )
    result = {
        "tool": "schemathesis",
        "schemathesis_version": version,
        "mode": mode_name,
        "seed": args.seed,
        "max_examples_per_operation": mode["max_examples"],
        "max_time_seconds": mode["max_time"],
        "phases": mode["phases"].split(","),
        "generation_modes": ["positive", "negative"],
        "checks_excluded": EXCLUDED_CHECKS,
        "schema": "openapi.json",
        "operations_tested": summary["operations"],
        "test_cases": summary["test_cases"],
        "requests": requests_total,
        "explicit_examples_added": stats.get("counts", {}).get("examples_added", 0),
        "jwts_minted": stats.get("counts", {}).get("jwt_minted", 0),
        "responses_by_operation_and_status": responses,
        "checks": summary["checks"],
        "server_errors_5xx": server_errors,
        "server_error_samples": stats.get("server_errors", []),
        "schema_violations": schema_violations,
        # 401s to requests with valid credentials: a broken auth hook, not a pass.
        "valid_credentials_refused": valid_auth_refused,
        "failures": failures,
        "errors": summary["errors"],
        "service_alive_at_end": alive,
        "service_exit_code": exit_code,
        "service_error_log_lines": service.error_lines[:20],
        "schemathesis_exit_code": st.returncode,
        "reports": str(WORK.relative_to(ROOT)),
        "duration_seconds": round(duration, 1),
        "passed": ok,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    log(
        f"{'PASSED' if ok else 'FAILED'}: {summary['test_cases']} cases, {requests_total} requests, "
        f"{len(failures)} distinct failures, {server_errors} 5xx, {schema_violations} schema violations, "
        f"{duration:.0f} s; {args.output.relative_to(ROOT) if args.output.is_relative_to(ROOT) else args.output}"
    )
    # The plain closing line CI reads: check results over all test cases.
    passed = sum(c.get("passed", 0) for c in summary["checks"].values())
    failed = sum(c.get("failed", 0) for c in summary["checks"].values())
    print(f"schemathesis: {passed} passed, {failed} failed", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
