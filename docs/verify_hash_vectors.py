#!/usr/bin/env python3
"""Check the event hash test vectors with an implementation independent of the platform.

Reads hash-test-vectors.json beside this file. For each vector it encodes `record` with
RFC 8785 (JCS), compares the bytes with `canonical`, hashes them with SHA-256, and compares
the digest with `hash`. Python's standard library only; see hash-spec.md.

    python3 docs/verify_hash_vectors.py          # check every vector
    python3 docs/verify_hash_vectors.py --write  # (re)compute canonical and hash

The JCS here covers what event records may hold: strings, integers within +-(2^53 - 1),
booleans, null, arrays, objects, and the few finite non-integers the vectors use.
"""

import hashlib
import json
import math
import pathlib
import sys

MAX_SAFE_INTEGER = 2**53 - 1


def jcs(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise ValueError(f"integer {value} is beyond +-(2^53 - 1)")
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("NaN and infinities are not JSON")
        if value.is_integer() and abs(value) <= MAX_SAFE_INTEGER:
            return str(int(value))
        text = repr(value)
        if "e" in text or "E" in text:
            raise ValueError(f"this checker does not format {text}; see RFC 8785 section 3.2.2.3")
        return text
    if isinstance(value, str):
        # JCS string escaping is exactly json.dumps(ensure_ascii=False): the short escapes
        # \b \f \n \r \t, \" and \\, \u00xx for other control characters, nothing else.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ",".join(jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        # Members sorted by the UTF-16 code units of their names.
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(jcs(name) + ":" + jcs(value[name]) for name in names) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


MEMBERS = [
    "aggregate_id", "aggregate_type", "event_id", "event_type", "event_version",
    "global_position", "metadata", "payload", "prev_hash", "recorded_at", "sequence",
    "tenant_id", "tenant_prev_hash",
]


def main() -> int:
    path = pathlib.Path(__file__).with_name("hash-test-vectors.json")
    document = json.loads(path.read_text(encoding="utf-8"))
    write = "--write" in sys.argv[1:]
    failures = 0
    previous = {}
    for vector in document["vectors"]:
        record = vector["record"]
        if sorted(record) != MEMBERS:
            raise SystemExit(f"{vector['name']}: record must have exactly {MEMBERS}")
        canonical = jcs(record)
        digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        if write:
            vector["canonical"] = canonical
            vector["hash"] = digest
        ok = vector.get("canonical") == canonical and vector.get("hash") == digest
        # Links between the vectors: each names the hash of its predecessor.
        link = vector.get("links_to")
        if link is not None and record["prev_hash"] != previous.get(link):
            print(f"{vector['name']}: prev_hash does not link to {link}")
            ok = False
        previous[vector["name"]] = digest
        print(f"{'ok  ' if ok else 'FAIL'} {vector['name']} {digest}")
        failures += 0 if ok else 1
    if write:
        path.write_text(json.dumps(document, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{len(document['vectors']) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
