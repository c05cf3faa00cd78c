#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ from the project's
examples (cds-hooks/examples). Python 3 standard library only; the JWT seeds are signed with the
fuzz-only key (fuzz/keys/fuzz-es384.pem) by the `openssl` command.

Each seed is named by the SHA-1 of its content, as libFuzzer names what it adds, so rerunning
writes nothing twice and seeds mix with what earlier runs found.

Usage: fuzz/seeds.py [TARGET ...]   (default: every target)
"""

import base64
import glob
import hashlib
import json
import os
import subprocess
import sys

FUZZ = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(FUZZ)
EXAMPLES = os.path.join(ROOT, "cds-hooks", "examples")
KEY = os.path.join(FUZZ, "keys", "fuzz-es384.pem")

# The fixtures of fuzz/src/lib.rs (`offramp_fuzz::jwt`).
ISS = "https://ehr.example.org"
ISS_TENANT = "https://ehr2.example.org/fhir"
TENANT = "t1"
AUD = "https://cds.example.org/cds-services/offramp-order-sign"
JKU = "http://127.0.0.1:9/jwks.json"
KID = "fuzz-es384"
NOW = 1_700_000_000


def dump(v):
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode()


class Corpus:
    def __init__(self, target):
        self.dir = os.path.join(FUZZ, "corpus", target)
        os.makedirs(self.dir, exist_ok=True)
        self.seen = set()

    def add(self, data):
        if isinstance(data, str):
            data = data.encode()
        path = os.path.join(self.dir, hashlib.sha1(data).hexdigest())
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(data)
        self.seen.add(path)


def requests():
    for p in sorted(glob.glob(os.path.join(EXAMPLES, "requests", "*.json"))):
        if not p.endswith(".expected.json"):
            yield p


def histories():
    return sorted(glob.glob(os.path.join(EXAMPLES, "history-*.json")))


def load(p):
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def resources(v):
    """Every resource in a Bundle / array / single resource (as src/clinical/history.rs)."""
    if isinstance(v, list):
        for x in v:
            yield from resources(x)
    elif isinstance(v, dict) and v.get("resourceType") == "Bundle":
        for e in v.get("entry") or []:
            if isinstance(e, dict) and "resource" in e:
                yield from resources(e["resource"])
    elif isinstance(v, dict):
        yield v


def walk(v):
    yield v
    if isinstance(v, dict):
        for x in v.values():
            yield from walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from walk(x)


def envelope(c):
    for p in requests():
        with open(p, "rb") as f:
            c.add(f.read())


def history(c):
    for p in histories():
        with open(p, "rb") as f:
            c.add(f.read())
    for p in requests():
        for v in (load(p).get("prefetch") or {}).values():
            if v is None:
                continue
            c.add(dump(v))
            for r in resources(v):
                c.add(dump(r))


def dose(c):
    docs = [load(p) for p in list(requests()) + histories()]
    for doc in docs:
        for v in walk(doc):
            if not isinstance(v, dict):
                continue
            for key in ("dosageInstruction", "dosage"):
                d = v.get(key)
                if d is None:
                    continue
                c.add(dump(d))
                for item in d if isinstance(d, list) else [d]:
                    c.add(dump(item))
                    # Each Quantity in it (doseQuantity, doseRange.low/high, maxDosePerPeriod
                    # numerator/denominator, boundsDuration) and its unit as a string.
                    for q in walk(item):
                        if isinstance(q, dict) and "value" in q:
                            c.add(dump(q))
                            for u in ("unit", "code"):
                                if isinstance(q.get(u), str):
                                    c.add(dump(q[u]))
            for key in ("quantity", "daysSupply", "expectedSupplyDuration"):
                q = v.get(key)
                if isinstance(q, dict) and "value" in q:
                    c.add(dump(q))


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def der_to_raw(der, size=48):
    """An ECDSA DER signature (SEQUENCE of two INTEGERs) as JWS wants it: r || s."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7F)
    out = b""
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out += int.from_bytes(der[i + 2 : i + 2 + n], "big").to_bytes(size, "big")
        i += 2 + n
    return out


def sign(header, claims):
    signing_input = f"{b64(header)}.{b64(claims)}"
    der = subprocess.run(
        ["openssl", "dgst", "-sha384", "-sign", KEY],
        input=signing_input.encode(),
        capture_output=True,
        check=True,
    ).stdout
    return f"{signing_input}.{b64(der_to_raw(der))}"


def jwt_cases():
    """(header, claims) pairs: accepted tokens of both issuers and one refusal of each kind."""
    h = {"alg": "ES384", "kid": KID, "typ": "JWT"}
    base = {"iss": ISS, "aud": AUD, "iat": NOW, "exp": NOW + 300, "jti": "seed-1"}
    tenant = dict(base, iss=ISS_TENANT, tenant=TENANT, jti="seed-2")
    return [
        (h, base),
        (h, tenant),
        (h, dict(base, aud=[AUD, "https://other.example.org"], jti="seed-3")),
        (h, dict(base, iat=NOW - 0.5, exp=NOW + 299.5, nbf=NOW - 10, jti="seed-4")),
        (dict(h, jku=JKU), base),
        (dict(h, jku=JKU, kid="rotated"), base),
        (h, dict(base, exp=NOW - 60)),
        (h, dict(base, iat=NOW + 60, exp=NOW + 120)),
        (h, dict(base, exp=NOW + 3600)),
        (h, dict(base, aud="https://cds.example.org/cds-services/offramp-order-select")),
        (h, dict(tenant, tenant="t2")),
        (h, {k: v for k, v in base.items() if k != "jti"}),
        (dict(h, alg="ES256"), base),
        (dict(h, alg="HS256"), base),
        (dict(h, crit=["exp"]), base),
        (h, dict(base, iss="https://unknown.example.org")),
    ]


def jwt(c):
    for header, claims in jwt_cases():
        token = sign(dump(header), dump(claims))
        c.add("Bearer " + token)
    # Shapes refused before any key is looked at.
    c.add("Bearer " + b64(dump({"alg": "none"})) + "." + b64(dump({"iss": ISS})) + ".")
    c.add("Basic dXNlcjpwYXNz")
    c.add("Bearer a.b")


def jwt_claims(c):
    for header, claims in jwt_cases():
        c.add(dump(header) + b"\0" + dump(claims))
        c.add(dump(claims))
    c.add(b'[1]\0{"iss":1}')


TARGETS = {
    "envelope": envelope,
    "history": history,
    "dose": dose,
    "jwt": jwt,
    "jwt_claims": jwt_claims,
}


def main(argv):
    names = argv or list(TARGETS)
    for name in names:
        if name not in TARGETS:
            sys.exit(f"seeds.py: unknown target {name!r} (known: {', '.join(TARGETS)})")
        c = Corpus(name)
        TARGETS[name](c)
        print(f"seeds: {name}: {len(c.seen)} seeds in {os.path.relpath(c.dir, ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
