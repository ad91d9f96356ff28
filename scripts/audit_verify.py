#!/usr/bin/env python3
"""The independent verifier of the platform's audit exports, NDJSON format.

Written from docs/audit.md (version 1) and docs/hash-spec.md alone, with Python's standard
library only, as a second opinion beside `platform audit verify`:

    python3 scripts/audit_verify.py FILE [--public-key KEY]... [--witness FILE]

KEY is a public key {"kid","algorithm","public_key"} as JSON text, or the path of a file
holding one or the JSON of /audit/public-key ({"keys": [...]}). Without --public-key the
keys of the export's header are trusted, which proves only that the file is consistent with
itself. The file is read once, line by line; memory holds one line and each chain's last
hash. Exit codes (audit.md section 7): 0 verified, 1 failed (one line `FAILED at position
<P>: <reason>: <detail>` or `FAILED at line <L>: malformed: <detail>`), 2 usage, 3 unreadable.
"""

import argparse
import hashlib
import json
import sys

EXPORT_SPEC = "platform-audit-export/1"
CHECKPOINT_SPEC = "platform-audit-checkpoint/1"
ZERO = "0" * 64
RECORD_MEMBERS = {
    "aggregate_id", "aggregate_type", "event_id", "event_type", "event_version",
    "global_position", "metadata", "payload", "prev_hash", "recorded_at", "sequence",
    "tenant_id", "tenant_prev_hash",
}
HEX = set("0123456789abcdef")


# --- Ed25519 verification, RFC 8032 section 5.1 (pure Ed25519: no prehash, no context) ---

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493  # the order of the base point
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1, 1, 0)  # extended coordinates (X, Y, Z, T), x = X/Z, y = Y/Z, xy = T/Z


def point_add(a, b):  # RFC 8032 section 5.1.4
    (x1, y1, z1, t1), (x2, y2, z2, t2) = a, b
    pa, pb = (y1 - x1) * (y2 - x2) % P, (y1 + x1) * (y2 + x2) % P
    pc, pd = 2 * t1 * t2 * D % P, 2 * z1 * z2 % P
    e, f, g, h = pb - pa, pd - pc, pd + pc, pb + pa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def point_mul(scalar, point):
    result = IDENTITY
    while scalar:
        if scalar & 1:
            result = point_add(result, point)
        point, scalar = point_add(point, point), scalar >> 1
    return result


def point_equal(a, b):
    return (a[0] * b[2] - b[0] * a[2]) % P == 0 and (a[1] * b[2] - b[1] * a[2]) % P == 0


def point_decode(data):  # RFC 8032 section 5.1.3; None when the bytes are not a point
    if len(data) != 32:
        return None
    y = int.from_bytes(data, "little")
    sign, y = y >> 255, y & ((1 << 255) - 1)
    if y >= P:
        return None
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if (v * x * x - u) % P != 0:
        x = x * SQRT_M1 % P
        if (v * x * x - u) % P != 0:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


BASE = point_decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 section 5.1.7: check [8][S]B = [8]R + [8][k]A'."""
    if len(signature) != 64:
        return False
    a, r = point_decode(public_key), point_decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    k = int.from_bytes(hashlib.sha512(signature[:32] + public_key + message).digest(), "little")
    return point_equal(point_mul(8 * s, BASE), point_mul(8, point_add(r, point_mul(k % L, a))))


# --- RFC 8785 (JCS), as hash-spec.md section 2 ---

def es_number(value: float) -> str:
    """A double as ECMAScript's Number.prototype.toString writes it (RFC 8785 3.2.2.3)."""
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("NaN and infinities are not JSON")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + es_number(-value)
    mantissa, _, exponent = repr(value).partition("e")  # repr is the shortest round trip
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    n = len(whole) + int(exponent or 0) - (len(whole + fraction) - len(digits))
    digits = digits.rstrip("0")
    k = len(digits)  # value = 0.digits * 10^n, as in the ECMAScript algorithm
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    return digits[0] + ("." + digits[1:] if k > 1 else "") + "e" + ("+" if e > 0 else "-") + str(abs(e))


def jcs(value) -> str:
    if value is None or value is True or value is False:
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value) if abs(value) <= 2**53 - 1 else es_number(float(value))
    if isinstance(value, float):
        return es_number(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # exactly JCS's minimal escaping
    if isinstance(value, list):
        return "[" + ",".join(jcs(item) for item in value) + "]"
    if isinstance(value, dict):  # members sorted by the UTF-16 code units of their names
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(jcs(name) + ":" + jcs(value[name]) for name in names) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def jcs_bytes(value) -> bytes:
    return jcs(value).encode("utf-8")  # raises on a lone surrogate


# --- the tenant heads tree, RFC 9162 section 2.1, as audit.md section 3 ---

def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def tree_root(leaves: list) -> bytes:
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)  # the largest power of two below n
    return node_hash(tree_root(leaves[:k]), tree_root(leaves[k:]))


def inclusion_root(leaf: bytes, index: int, size: int, path: list):
    """RFC 9162 section 2.1.3.2: the root the audit path leads to, or None if it cannot."""
    if not 0 <= index < size:
        return None
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return r if sn == 0 else None


def head_leaf(tenant_id, position: int, hash_hex: str) -> bytes:
    return leaf_hash(jcs_bytes({"hash": hash_hex, "position": position, "tenant_id": tenant_id}))


# --- the verification, audit.md section 5 ---

class Failed(Exception):
    def __init__(self, reason, detail, position=None, line=None):
        super().__init__(f"FAILED at position {position}: {reason}: {detail}" if line is None
                         else f"FAILED at line {line}: {reason}: {detail}")


class Usage(Exception):
    pass


def is_hex(text, length) -> bool:
    return isinstance(text, str) and len(text) == length and set(text) <= HEX


def parse_key(obj, where) -> tuple:
    """A public key object as (kid, raw key); Usage if it is not a valid Ed25519 key."""
    if not isinstance(obj, dict) or obj.get("algorithm") != "Ed25519":
        raise Usage(f"{where}: not an Ed25519 public key object")
    raw_hex, kid = obj.get("public_key"), obj.get("kid")
    if not is_hex(raw_hex, 64) or point_decode(bytes.fromhex(raw_hex)) is None:
        raise Usage(f"{where}: public_key is not 64 lower-case hex characters of an Ed25519 key")
    if kid != hashlib.sha256(bytes.fromhex(raw_hex)).hexdigest()[:16]:
        raise Usage(f"{where}: kid {kid!r} is not derived from its public_key")
    return kid, bytes.fromhex(raw_hex)


def load_keys(argument: str) -> dict:
    if argument.lstrip().startswith("{"):
        text = argument
    else:
        try:
            with open(argument, encoding="utf-8") as file:
                text = file.read()
        except (OSError, UnicodeDecodeError) as error:
            raise Usage(f"--public-key {argument}: {error}")
    try:
        document = json.loads(text)
    except ValueError as error:
        raise Usage(f"--public-key {argument}: not JSON: {error}")
    keys = document.get("keys") if isinstance(document, dict) and "keys" in document else [document]
    if not isinstance(keys, list) or not keys:
        raise Usage(f"--public-key {argument}: no keys")
    return dict(parse_key(key, f"--public-key {argument}") for key in keys)


def no_duplicates(pairs):
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError("a member name appears twice")
    return dict(pairs)


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def parse_item(raw: bytes):
    """The JSON object of one line, or a ValueError saying why it is not one."""
    item = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates,
                      parse_constant=reject_constant)
    if not isinstance(item, dict):
        raise ValueError("not a JSON object")
    return item


KINDS = {
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    str: (lambda v: isinstance(v, str), "a string"),
    dict: (lambda v: isinstance(v, dict), "an object"),
    list: (lambda v: isinstance(v, list), "an array"),
    None: (lambda v: v is None or isinstance(v, str), "a string or null"),
}


def member(obj, name, kind, fail):
    if name not in obj:
        fail(f"lacks the member `{name}`")
    test, description = KINDS[kind]
    if not test(obj[name]):
        fail(f"`{name}` is not {description}")
    return obj[name]


def checkpoint_members(item, fail) -> dict:
    fields = {"position": int, "head_hash": str, "tenants_root": str, "signed_at": str,
              "kid": str, "signature": str}
    return {name: member(item, name, kind, fail) for name, kind in fields.items()}


class Witness:
    """The witness file's checkpoints, read alongside the export in increasing position."""

    def __init__(self, path):
        self.path, self.file, self.line = path, open(path, "rb"), 0
        self.checked, self.latest, self.next = 0, None, None
        self.advance()

    def advance(self):
        self.next = None
        for raw in self.file:
            self.line += 1
            if not raw.strip():
                continue
            def fail(detail):
                raise Usage(f"--witness {self.path} line {self.line}: {detail}")
            try:
                item = parse_item(raw)
            except ValueError as error:
                fail(f"not a JSON object: {error}")
            if item.get("type") != "checkpoint":
                fail("not a checkpoint item")
            checkpoint_members(item, fail)
            if self.latest is not None and item["position"] < self.latest:
                fail("positions go down: the witness must be in the order it was written")
            self.latest, self.next = item["position"], (self.line, item)
            return

    def at(self, position):
        """The witnessed checkpoints at position (skipping those below it, not covered)."""
        found = []
        while self.next and self.next[1]["position"] <= position:
            if self.next[1]["position"] == position:
                found.append(self.next)
            self.advance()
        return found

    def finish(self):
        while self.next:
            self.advance()
        self.file.close()


class Verifier:
    def __init__(self, pinned: dict, witness):
        self.pinned, self.witness = pinned, witness
        self.keys, self.rejected = pinned or {}, []
        self.header = None
        self.events = self.checkpoints = self.tail = 0
        self.last_position, self.last_hash = None, ZERO
        self.last_checkpoint = None
        self.chains = {}  # tenant_id (None: platform) -> (hash, position) of its last event
        self.ended = False

    def at(self):  # the position a failure at the end concerns: the last one read
        return self.last_position if self.last_position is not None else self.start - 1

    # items

    def line(self, number: int, raw: bytes, rest):
        def malformed(detail):
            raise Failed("malformed", detail, line=number)
        if self.ended:
            raise Failed("truncated", f"line {number} follows the end record", self.at())
        if not raw.strip():
            malformed("a blank line")
        try:
            item = parse_item(raw)
        except (ValueError, UnicodeDecodeError) as error:
            malformed(f"not a JSON object: {error}")
        kind = item.get("type")
        if self.header is None:
            if kind != "header":
                malformed("the first line is not a header")
            return self.on_header(item, malformed)
        if kind == "event":
            return self.on_event(item, malformed, rest)
        if kind == "checkpoint":
            return self.on_checkpoint(item, malformed)
        if kind == "end":
            return self.on_end(item, malformed)
        malformed("a header after the first line" if kind == "header"
                  else f"not an item of a known type: {kind!r}")

    def on_header(self, item, malformed):
        spec = member(item, "spec", str, malformed)
        if spec != EXPORT_SPEC:
            malformed(f"unknown spec {spec!r}")
        if member(item, "hash_spec", int, malformed) != 1:
            malformed(f"unknown hash_spec {item['hash_spec']!r}")
        self.scope = member(item, "scope", str, malformed)
        if self.scope not in ("log", "tenant"):
            malformed(f"unknown scope {self.scope!r}")
        self.tenant = member(item, "tenant_id", None, malformed)
        if (self.tenant is None) != (self.scope == "log"):
            malformed("tenant_id must be null in a log export and a tenant in a tenant export")
        self.start, self.to = member(item, "from", int, malformed), member(item, "to", int, malformed)
        if self.start < 1:
            malformed("`from` is below 1")
        member(item, "exported_at", str, malformed)
        keys = member(item, "public_keys", list, malformed)
        if not self.pinned:
            for index, key in enumerate(keys):
                try:
                    kid, raw = parse_key(key, f"header key {index}")
                    self.keys[kid] = raw
                except Usage as rejected:
                    self.rejected.append(str(rejected))
        self.expected, self.prev = self.start, ZERO
        self.header = item

    def on_event(self, item, malformed, rest):
        hash_hex = member(item, "hash", str, malformed)
        record = member(item, "record", dict, malformed)
        if set(record) != RECORD_MEMBERS:
            missing, extra = RECORD_MEMBERS - set(record), set(record) - RECORD_MEMBERS
            malformed(f"the record lacks {sorted(missing)}" if missing
                      else f"the record has members beyond the 13: {sorted(extra)}")
        claimed = record["global_position"]
        at = self.expected if self.scope == "log" or not KINDS[int][0](claimed) else claimed
        try:
            digest = hashlib.sha256(jcs_bytes(record)).hexdigest()
        except (ValueError, TypeError, UnicodeEncodeError) as error:
            malformed(f"the record has no canonical encoding: {error}")
        if digest != hash_hex:
            raise Failed("edited", f"the record hashes to {digest}, not to its hash {hash_hex}", at)
        position = member(record, "global_position", int, malformed)
        tenant = member(record, "tenant_id", None, malformed)
        prev_hash = member(record, "prev_hash", str, malformed)
        tenant_prev = member(record, "tenant_prev_hash", str, malformed)

        if self.scope == "log":
            if position > self.expected:
                reason = "reordered" if self.lower_follows(rest, position) else "missing"
                raise Failed(reason, f"expected position {self.expected}, found {position}"
                             + (" and a lower one after it" if reason == "reordered" else ""),
                             self.expected)
            if position < self.expected:
                raise Failed("reordered", f"expected position {self.expected}, found {position}",
                             self.expected)
            if (self.start == 1 or self.events) and prev_hash != self.prev:
                raise Failed("edited", f"prev_hash {prev_hash} does not link to the hash of "
                             f"position {position - 1}, {self.prev}", position)
        else:
            floor = self.start if self.last_position is None else self.last_position + 1
            if position < floor:
                raise Failed("reordered", f"position {position} where positions must increase "
                             f"from {floor}", position)
            if tenant != self.tenant:
                raise Failed("edited", f"the event is of tenant {tenant}, not {self.tenant}",
                             position)

        chain = self.chains.get(tenant)
        link = chain[0] if chain else (ZERO if self.start == 1 else None)
        if link is not None and tenant_prev != link:
            # In a tenant export positions have gaps, so a swap shows first as a broken link.
            if self.scope == "tenant" and self.lower_follows(rest, position):
                raise Failed("reordered", f"position {position} is followed by a lower one",
                             position)
            raise Failed("edited", f"tenant_prev_hash {tenant_prev} does not link to its chain's "
                         f"last hash {link}", position)

        self.prev = self.last_hash = hash_hex
        self.chains[tenant] = (hash_hex, position)
        self.last_position, self.expected = position, position + 1
        self.events, self.tail = self.events + 1, self.tail + 1
        for line, witnessed in self.witness.at(position) if self.witness else ():
            self.check_signed(witnessed, f"witness line {line}: ")
            self.check_log_head(witnessed, f"witness line {line}: ")
            self.witness.checked += 1

    def lower_follows(self, rest, position) -> bool:
        """Whether an event below position follows in the rest of the file (which is read)."""
        for raw in rest:
            try:
                item = parse_item(raw)
                found = item["record"]["global_position"] if item.get("type") == "event" else None
            except (ValueError, UnicodeDecodeError, KeyError, TypeError):
                continue
            if KINDS[int][0](found) and found < position:
                return True
        return False

    def check_signed(self, item, prefix=""):
        """Step 3's first two rules: a trusted kid, and a signature that verifies under it."""
        position, kid = item["position"], item["kid"]
        if kid not in self.keys:
            trusted = ", ".join(sorted(self.keys)) or "none"
            note = "" if self.pinned else "; the header's keys" + (
                f" (rejected: {'; '.join(self.rejected)})" if self.rejected else "")
            raise Failed("unknown-key", f"{prefix}kid {kid} is not a trusted key "
                         f"(trusted: {trusted}{note})", position)
        message = jcs_bytes({"spec": CHECKPOINT_SPEC, "position": position,
                             "head_hash": item["head_hash"], "tenants_root": item["tenants_root"],
                             "signed_at": item["signed_at"], "kid": kid})
        signature = item["signature"]
        if not (is_hex(signature, 128) and ed25519_verify(self.keys[kid], message,
                                                          bytes.fromhex(signature))):
            raise Failed("bad-signature", f"{prefix}the signature does not verify under key {kid}",
                         position)

    def check_log_head(self, item, prefix=""):
        """Step 3's last rules, for a checkpoint of a log export (or a witnessed one)."""
        position = item["position"]
        if self.last_position is None or position > self.last_position:
            raise Failed("truncated", f"{prefix}the checkpoint names position {position}, beyond "
                         f"the last event read ({self.last_position})", position)
        if position < self.last_position:
            raise Failed("reordered", f"{prefix}the checkpoint of position {position} follows "
                         f"the event at {self.last_position}", position)
        if item["head_hash"] != self.last_hash:
            raise Failed("rewritten", f"{prefix}the checkpoint signs head {item['head_hash']}, "
                         f"the event at {position} is {self.last_hash}", position)
        # Beyond step 3: from position 1 every chain's head is known, so the signed
        # tenants_root can be recomputed as well (section 3).
        if self.scope == "log" and self.start == 1:
            order = sorted(self.chains, key=lambda t: (t is not None, (t or "").encode("utf-8")))
            root = tree_root([head_leaf(t, self.chains[t][1], self.chains[t][0]) for t in order])
            if root.hex() != item["tenants_root"]:
                raise Failed("rewritten", f"{prefix}the checkpoint signs tenants_root "
                             f"{item['tenants_root']}, the chains' heads make {root.hex()}",
                             position)

    def on_checkpoint(self, item, malformed):
        fields = checkpoint_members(item, malformed)
        if self.scope == "tenant":
            head = member(item, "tenant_head", dict, malformed)
            proof = member(item, "proof", dict, malformed)
            head_hash = member(head, "hash", str, malformed)
            head_position = member(head, "position", int, malformed)
            head_tenant = member(head, "tenant_id", None, malformed)
            index = member(proof, "leaf_index", int, malformed)
            size = member(proof, "tree_size", int, malformed)
            path = member(proof, "path", list, malformed)
        self.check_signed(fields)
        if self.scope == "log":
            self.check_log_head(fields)
        else:
            position = fields["position"]
            if head_tenant != self.tenant:
                raise Failed("rewritten", f"the checkpoint's tenant_head is of tenant "
                             f"{head_tenant}, not {self.tenant}", position)
            if self.last_position is None or head_position > self.last_position:
                raise Failed("truncated", f"the tenant_head names position {head_position}, "
                             f"beyond the tenant's last event read ({self.last_position})",
                             head_position)
            if head_position < self.last_position:
                raise Failed("reordered", f"the checkpoint of the tenant's event at "
                             f"{head_position} follows its event at {self.last_position}",
                             head_position)
            if head_hash != self.last_hash or head_position > position:
                raise Failed("rewritten", f"the tenant_head ({head_hash} at {head_position}) is "
                             f"not the tenant's event at {self.last_position} ({self.last_hash}) "
                             f"at or before the checkpoint's position {position}", head_position)
            hashes = [bytes.fromhex(p) if is_hex(p, 64) else None for p in path]
            root = None if None in hashes else inclusion_root(
                head_leaf(head_tenant, head_position, head_hash), index, size, hashes)
            if root is None or root.hex() != fields["tenants_root"]:
                raise Failed("rewritten", f"the proof of the tenant's head does not reach the "
                             f"signed tenants_root {fields['tenants_root']}", position)
        self.checkpoints, self.tail, self.last_checkpoint = self.checkpoints + 1, 0, fields["position"]

    def on_end(self, item, malformed):
        counts = {name: member(item, name, int if name != "last_hash" else str, malformed)
                  for name in ("events", "checkpoints", "last_position", "last_hash")}
        read = {"events": self.events, "checkpoints": self.checkpoints,
                "last_position": self.last_position or 0, "last_hash": self.last_hash}
        wrong = [f"{name} {counts[name]} (read {read[name]})" for name in read
                 if counts[name] != read[name]]
        if wrong:
            raise Failed("truncated", "the end record disagrees with the file: " + ", ".join(wrong),
                         self.at())
        self.ended = True

    def finish(self, lines):
        if self.header is None:
            raise Failed("malformed", "the file is empty: no header", line=1)
        if not self.ended:
            raise Failed("truncated", f"the file ends after line {lines} without its end record",
                         self.at())
        last = self.last_position
        if self.scope == "log" and self.at() != self.to:
            raise Failed("truncated", f"the last event is at {last}, the header's `to` is "
                         f"{self.to}", self.at())
        if self.scope == "tenant" and last is not None and last > self.to:
            raise Failed("truncated", f"the last event is at {last}, beyond the header's `to` "
                         f"{self.to}", self.at())

    def summary(self) -> list:
        lines = [f"verified {self.events} events, {self.checkpoints} checkpoints, "
                 f"positions {self.start}..{self.to}"]
        if self.last_checkpoint is None:
            lines.append(f"unsigned tail: {self.tail} events (no checkpoint in the file)")
        else:
            lines.append(f"unsigned tail: {self.tail} events after the checkpoint at position "
                         f"{self.last_checkpoint}")
        if self.scope == "tenant":
            lines.append(f"scope: tenant {self.tenant} (its chain only)")
        if not self.pinned:
            lines.append("keys: the header's own, not pinned with --public-key: this proves "
                         "only that the file is consistent with itself")
        if self.witness:
            lines.append(f"witness: {self.witness.checked} checkpoints matched, the latest "
                         f"witnessed position is {self.witness.latest}")
        return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Verify an audit export (docs/audit.md).")
    parser.add_argument("file", help="the NDJSON export")
    parser.add_argument("--public-key", action="append", default=[], metavar="KEY",
                        help="a trusted key: its JSON, or a file of it or of /audit/public-key")
    parser.add_argument("--witness", metavar="FILE", help="a witness file of checkpoints")
    parser.add_argument("--format", choices=["ndjson"], default="ndjson",
                        help="only NDJSON; the platform's own verifier reads protobuf")
    args = parser.parse_args(argv)
    try:
        pinned = {}
        for argument in args.public_key:
            pinned.update(load_keys(argument))
    except Usage as error:
        print(f"audit_verify: {error}", file=sys.stderr)
        return 2
    witness = None
    try:
        witness = Witness(args.witness) if args.witness else None
        with open(args.file, "rb") as export:
            verifier, number = Verifier(pinned, witness), 0
            for number, raw in enumerate(export, 1):
                verifier.line(number, raw, export)
            verifier.finish(number)
            if witness:
                witness.finish()
    except Failed as failure:
        print(failure)
        return 1
    except Usage as error:
        print(f"audit_verify: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"audit_verify: cannot read: {error}", file=sys.stderr)
        return 3
    print("\n".join(verifier.summary()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
