#!/usr/bin/env python3
"""Self-test of scripts/audit_verify.py: builds small exports, tampers with them, and checks
the verdicts (docs/audit.md sections 5 to 7). Standard library only.

    python3 -m unittest scripts/test_audit_verify.py -v
"""

import contextlib
import hashlib
import io
import json
import pathlib
import subprocess
import sys
import tempfile
import unittest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import audit_verify as av  # noqa: E402

SCRIPT = HERE / "audit_verify.py"
VECTORS = HERE.parent / "docs" / "hash-test-vectors.json"


# --- Ed25519 signing, RFC 8032 section 5.1.5 and 5.1.6 (the test's own, to make exports) ---

def encode_point(point) -> bytes:
    x, y, z, _ = point
    zi = pow(z, av.P - 2, av.P)
    x, y = x * zi % av.P, y * zi % av.P
    return (y | (x & 1) << 255).to_bytes(32, "little")


def expand(secret: bytes):
    h = hashlib.sha512(secret).digest()
    a = int.from_bytes(h[:32], "little") & ((1 << 254) - 8) | (1 << 254)
    return a, h[32:]


def public_of(secret: bytes) -> bytes:
    return encode_point(av.point_mul(expand(secret)[0], av.BASE))


def sign(secret: bytes, message: bytes) -> bytes:
    a, prefix = expand(secret)
    public = encode_point(av.point_mul(a, av.BASE))
    r = int.from_bytes(hashlib.sha512(prefix + message).digest(), "little") % av.L
    big_r = encode_point(av.point_mul(r, av.BASE))
    k = int.from_bytes(hashlib.sha512(big_r + public + message).digest(), "little") % av.L
    return big_r + ((r + k * a) % av.L).to_bytes(32, "little")


RFC8032 = [  # section 7.1, TEST 1 to 3: secret, public, message, signature
    ("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
     "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a", "",
     "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
     "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"),
    ("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
     "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c", "72",
     "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
     "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
    ("c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
     "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025", "af82",
     "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
     "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a"),
]


class Key:
    def __init__(self, name: str):
        self.secret = hashlib.sha256(name.encode()).digest()
        self.public = public_of(self.secret)
        self.kid = hashlib.sha256(self.public).hexdigest()[:16]
        self.json = {"kid": self.kid, "algorithm": "Ed25519", "public_key": self.public.hex()}


KEY, OTHER_KEY = Key("platform audit key"), Key("someone else's key")


# --- building exports (with the test's own canonical encoding and tree) ---

def canonical(value) -> bytes:  # JCS for ASCII member names and integers, which is all we use
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mth(leaves):  # RFC 9162 2.1.1
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(b"\x01" + mth(leaves[:k]) + mth(leaves[k:])).digest()


def audit_path(m, leaves):  # RFC 9162 2.1.3.1
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return audit_path(m, leaves[:k]) + [mth(leaves[k:])]
    return audit_path(m - k, leaves[k:]) + [mth(leaves[:k])]


T1 = "c1e0a3f2-6b1d-4c2e-9a7f-0d3b5e8f1a21"  # sorts after T2
T2 = "5a7d9e0b-2c4f-4e61-8b3a-7f1c9d2e4b52"
ZERO = "0" * 64
EVENTS = [  # tenant, aggregate type, aggregate id, event type, payload
    (T1, "Tenant", T1, "TenantCreated", {"TenantCreated": {"name": "Acme Ltd", "plan": "starter"}}),
    (T2, "Tenant", T2, "TenantCreated", {"TenantCreated": {"name": "Zeta Åb", "plan": "pro"}}),
    (None, "Plan", "starter", "PlanPublished", {"PlanPublished": {"price": 1900}}),
    (T1, "Order", "order-1", "OrderPlaced", {"OrderPlaced": {"amount": 1250, "note": "crème ✓"}}),
    (T2, "Order", "order-2", "OrderPlaced", {"OrderPlaced": {"amount": -40, "note": "x"}}),
    (T1, "Order", "order-1", "OrderShipped", {"OrderShipped": {"carrier": "DHL"}}),
    (T2, "Order", "order-2", "OrderShipped", {"OrderShipped": {"carrier": "UPS"}}),
]


def make_events(change_payload_of=None):
    """The seven events of the log, chained; optionally with one payload changed."""
    events, prev, chains, sequences = [], ZERO, {}, {}
    for position, (tenant, agg_type, agg_id, event_type, payload) in enumerate(EVENTS, 1):
        if position == change_payload_of:
            payload = {"rewritten": True}
        sequences[agg_id] = sequences.get(agg_id, 0) + 1
        record = {
            "aggregate_id": agg_id, "aggregate_type": agg_type,
            "event_id": f"01932b6e-9000-7abc-8def-{position:012d}", "event_type": event_type,
            "event_version": "1", "global_position": position,
            "metadata": {"actor_id": "user-7", "correlation_id": f"corr-{position}"},
            "payload": payload, "prev_hash": prev,
            "recorded_at": f"2026-11-22T01:04:{position:02d}.123456Z",
            "sequence": sequences[agg_id], "tenant_id": tenant,
            "tenant_prev_hash": chains.get(tenant, (ZERO, 0))[0],
        }
        prev = sha(canonical(record))
        chains[tenant] = (prev, position)
        events.append({"type": "event", "hash": prev, "record": record})
    return events


def heads_at(events, position):
    heads = {}
    for event in events[:position]:
        heads[event["record"]["tenant_id"]] = (event["hash"], event["record"]["global_position"])
    order = sorted(heads, key=lambda t: (t is not None, t or ""))
    leaves = [hashlib.sha256(b"\x00" + canonical(
        {"hash": heads[t][0], "position": heads[t][1], "tenant_id": t})).digest() for t in order]
    return order, heads, leaves


def checkpoint(events, position, key=KEY, head_hash=None, tenants_root=None):
    _, _, leaves = heads_at(events, position)
    signed = {"spec": "platform-audit-checkpoint/1", "position": position,
              "head_hash": head_hash or events[position - 1]["hash"],
              "tenants_root": tenants_root or mth(leaves).hex(),
              "signed_at": f"2026-11-22T01:05:{position:02d}.000000Z", "kid": key.kid}
    item = {"type": "checkpoint", **{k: v for k, v in signed.items() if k != "spec"}}
    item["signature"] = sign(key.secret, canonical(signed)).hex()
    return item


def header(scope="log", tenant=None, keys=(KEY,), start=1, to=7):
    return {"type": "header", "spec": "platform-audit-export/1", "hash_spec": 1, "scope": scope,
            "tenant_id": tenant, "from": start, "to": to,
            "exported_at": "2026-12-01T08:00:00.000000Z", "public_keys": [k.json for k in keys]}


def end(items):
    events = [i for i in items if i["type"] == "event"]
    return {"type": "end", "events": len(events),
            "checkpoints": sum(i["type"] == "checkpoint" for i in items),
            "last_position": events[-1]["record"]["global_position"] if events else 0,
            "last_hash": events[-1]["hash"] if events else ZERO}


def dump(items):
    return [json.dumps(item, separators=(",", ":"), ensure_ascii=False) for item in items]


def log_export(events=None, checkpoints=None, key=KEY):
    """Lines: header, e1, e2, e3, c3, e4, e5, e6, c6, e7, end (line L is index L - 1)."""
    events = events or make_events()
    checkpoints = checkpoints or {3: checkpoint(events, 3, key), 6: checkpoint(events, 6, key)}
    body = []
    for event in events:
        body.append(event)
        body.extend([checkpoints[event["record"]["global_position"]]]
                    if event["record"]["global_position"] in checkpoints else [])
    return dump([header(keys=(key,))] + body + [end(body)])


def tenant_export(tenant=T2, at=6):
    """T2's events 2, 5, 7 with the checkpoint of position 6 after event 5 (its head there)."""
    events = make_events()
    item = checkpoint(events, at)
    order, heads, leaves = heads_at(events, at)
    index = order.index(tenant)
    item["tenant_head"] = {"hash": heads[tenant][0], "position": heads[tenant][1],
                           "tenant_id": tenant}
    item["proof"] = {"leaf_index": index, "tree_size": len(leaves),
                     "path": [p.hex() for p in audit_path(index, leaves)]}
    body = []
    for event in events:
        if event["record"]["tenant_id"] == tenant:
            body.append(event)
            if event["record"]["global_position"] == heads[tenant][1]:
                body.append(item)
    return dump([header("tenant", tenant)] + body + [end(body)])


def change_byte(text: str, at: int) -> str:
    c = text[at]
    return text[:at] + (chr(ord(c) - 1) if c in "9fFzZ" else chr(ord(c) + 1)) + text[at + 1:]


class Run:
    def __init__(self, case, lines, *args):
        self.dir = tempfile.TemporaryDirectory()
        case.addCleanup(self.dir.cleanup)
        self.path = pathlib.Path(self.dir.name) / "export.ndjson"
        self.path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.keyfile = pathlib.Path(self.dir.name) / "key.json"
        self.keyfile.write_text(json.dumps({"keys": [KEY.json]}))
        out, err = io.StringIO(), io.StringIO()
        argv = [str(self.path)] + [str(self.keyfile) if a == "KEYFILE" else a for a in args]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                self.code = av.main(argv)
            except SystemExit as exit:
                self.code = exit.code
        self.out, self.err = out.getvalue(), err.getvalue()


PINNED = ("--public-key", "KEYFILE")


class Ed25519(unittest.TestCase):
    def test_rfc8032_vectors(self):
        for secret, public, message, signature in RFC8032:
            secret, public, message, signature = map(bytes.fromhex, (secret, public, message,
                                                                     signature))
            with self.subTest(public=public.hex()[:8]):
                self.assertEqual(public_of(secret), public)
                self.assertEqual(sign(secret, message), signature)
                self.assertTrue(av.ed25519_verify(public, message, signature))
                self.assertFalse(av.ed25519_verify(public, message + b"x", signature))
                forged = bytearray(signature)
                forged[5] ^= 1
                self.assertFalse(av.ed25519_verify(public, message, bytes(forged)))
                # S + L is the same point arithmetic but not canonical: rejected (5.1.7 step 1)
                s = int.from_bytes(signature[32:], "little") + av.L
                self.assertFalse(av.ed25519_verify(public, message,
                                                   signature[:32] + s.to_bytes(32, "little")))


class Encodings(unittest.TestCase):
    def test_hash_vectors(self):
        for vector in json.loads(VECTORS.read_text(encoding="utf-8"))["vectors"]:
            self.assertEqual(av.jcs(vector["record"]), vector["canonical"])
            self.assertEqual(sha(av.jcs_bytes(vector["record"])), vector["hash"])

    def test_numbers(self):
        for value, text in [(1.0, "1"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
                            (1e-7, "1e-7"), (0.000001, "0.000001"), (-0.0, "0"), (123.456,
                            "123.456"), (-1.5e-9, "-1.5e-9"), (2**60, "1152921504606847000")]:
            self.assertEqual(av.jcs(value), text)

    def test_merkle_inclusion(self):
        for n in range(1, 12):
            leaves = [hashlib.sha256(bytes([0, i])).digest() for i in range(n)]
            self.assertEqual(av.tree_root(leaves), mth(leaves))
            for m in range(n):
                path = audit_path(m, leaves)
                self.assertEqual(av.inclusion_root(leaves[m], m, n, path), mth(leaves))
                wrong_leaf = hashlib.sha256(b"\x00other").digest()
                self.assertNotEqual(av.inclusion_root(wrong_leaf, m, n, path), mth(leaves))
                if n > 1:
                    other = (m + 1) % n
                    self.assertNotEqual(av.inclusion_root(leaves[m], other, n, path), mth(leaves))


class Verdicts(unittest.TestCase):
    def verdict(self, lines, *args):
        run = Run(self, lines, *(args or PINNED))
        return run.code, run.out.strip()

    def assertFails(self, lines, prefix, *args):
        code, out = self.verdict(lines, *args)
        self.assertEqual(code, 1, out)
        self.assertTrue(out.startswith(prefix), out)
        self.assertEqual(len(out.splitlines()), 1, out)


class LogExport(Verdicts):

    def test_intact_through_the_command_line(self):
        run = Run(self, log_export())
        result = subprocess.run([sys.executable, str(SCRIPT), str(run.path),
                                 "--public-key", str(run.keyfile)], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "verified 7 events, 2 checkpoints, positions 1..7")
        self.assertEqual(lines[1], "unsigned tail: 1 events after the checkpoint at position 6")

    def test_key_forms(self):
        self.assertEqual(self.verdict(log_export(), "--public-key", json.dumps(KEY.json))[0], 0)
        code, out = self.verdict(log_export(), "--public-key", json.dumps(OTHER_KEY.json),
                                 "--public-key", "KEYFILE")
        self.assertEqual(code, 0, out)

    def test_header_keys_when_none_pinned(self):
        run = Run(self, log_export())
        code, out = run.code, run.out
        self.assertEqual(code, 0, out)
        self.assertIn("the header's own", out)

    def test_reserialized_file_verifies(self):
        def scramble(value):  # members in reverse order, spaces, ASCII escapes
            if isinstance(value, dict):
                return {k: scramble(value[k]) for k in reversed(list(value))}
            return value
        lines = [json.dumps(scramble(json.loads(line)), separators=(", ", ": "))
                 for line in log_export()]
        self.assertEqual(self.verdict(lines)[0], 0)

    def test_one_byte_changed_in_each_member(self):
        members = sorted(av.RECORD_MEMBERS) + ["hash"]
        for name in members:
            with self.subTest(member=name):
                lines = log_export()
                line = lines[5]  # event 4
                key = f'"{name}":'
                self.assertEqual(line.count(key), 1)
                at = line.index(key) + len(key)
                while not line[at].isalnum():
                    at += 1
                lines[5] = change_byte(line, at)
                self.assertFails(lines, "FAILED at position 4: edited: ")

    def test_event_deleted(self):
        lines = log_export()
        del lines[6]  # event 5
        self.assertFails(lines, "FAILED at position 5: missing: ")

    def test_tail_cut_after_a_checkpoint(self):
        lines = log_export()
        self.assertFails(lines[:5] + lines[-1:], "FAILED at position 3: truncated: ")

    def test_end_record_missing_or_not_last(self):
        lines = log_export()
        self.assertFails(lines[:-1], "FAILED at position 7: truncated: ")
        self.assertFails(lines + [lines[1]], "FAILED at position 7: truncated: ")

    def test_to_not_reached(self):
        lines = log_export()
        lines[0] = json.dumps(header(to=9))
        self.assertFails(lines, "FAILED at position 7: truncated: ")

    def test_checkpoint_beyond_the_last_event(self):
        lines = log_export()
        lines[7], lines[8] = lines[8], lines[7]  # c6 before e6
        self.assertFails(lines, "FAILED at position 6: truncated: ")

    def test_events_swapped(self):
        lines = log_export()
        lines[5], lines[6] = lines[6], lines[5]
        self.assertFails(lines, "FAILED at position 4: reordered: ")

    def test_event_duplicated(self):
        lines = log_export()
        self.assertFails(lines[:6] + lines[5:], "FAILED at position 5: reordered: ")

    def test_chain_rewritten_with_old_checkpoints(self):
        original = make_events()
        rewritten = make_events(change_payload_of=2)
        lines = log_export(rewritten, {3: checkpoint(original, 3), 6: checkpoint(original, 6)})
        self.assertFails(lines, "FAILED at position 3: rewritten: ")

    def test_signed_tenants_root_recomputed(self):
        events = make_events()
        lines = log_export(events, {3: checkpoint(events, 3, tenants_root="ab" * 32),
                                    6: checkpoint(events, 6)})
        self.assertFails(lines, "FAILED at position 3: rewritten: ")

    def test_forged_signature(self):
        lines = log_export()
        item = json.loads(lines[4])
        item["signature"] = change_byte(item["signature"], 70)
        lines[4] = json.dumps(item)
        self.assertFails(lines, "FAILED at position 3: bad-signature: ")
        item = json.loads(lines[8])
        item["signed_at"] = "2026-11-22T01:05:06.000001Z"  # any signed member
        self.assertFails(lines[:8] + [json.dumps(item)] + lines[9:],
                         "FAILED at position 3: bad-signature: ")

    def test_signed_by_another_key(self):
        lines = log_export(key=OTHER_KEY)
        self.assertFails(lines, "FAILED at position 3: unknown-key: ")
        self.assertEqual(self.verdict(lines, "--public-key", json.dumps(OTHER_KEY.json))[0], 0)

    def test_header_key_with_a_wrong_kid_is_not_trusted(self):
        lines = log_export()
        head = json.loads(lines[0])
        head["public_keys"][0]["public_key"] = OTHER_KEY.public.hex()
        lines[0] = json.dumps(head)
        run = Run(self, lines)
        code, out = run.code, run.out
        self.assertEqual(code, 1)
        self.assertTrue(out.startswith("FAILED at position 3: unknown-key: "), out)

    def test_malformed_lines(self):
        cases = {
            "{not json": 6, "": 6, "[1]": 6, '{"type":"gossip"}': 6,
            '{"type":"event","record":{}}': 6, json.dumps(header()): 6,
            '{"type":"event","hash":"%s","record":{"x":1}}' % ZERO: 6,
            '{"type":"checkpoint","position":3}': 5,
        }
        for line, number in cases.items():
            with self.subTest(line=line):
                lines = log_export()
                lines[number - 1] = line
                self.assertFails(lines, f"FAILED at line {number}: malformed: ")
        lines = log_export()
        lines[0] = lines[0].replace("platform-audit-export/1", "platform-audit-export/2")
        self.assertFails(lines, "FAILED at line 1: malformed: ")
        self.assertFails(log_export()[1:], "FAILED at line 1: malformed: ")
        self.assertFails([], "FAILED at line 1: malformed: ")

    def test_export_from_a_later_position(self):
        events = make_events()
        body = events[3:6] + [checkpoint(events, 6), events[6]]
        lines = dump([header(start=4)] + body + [end(body)])
        code, out = self.verdict(lines)
        self.assertEqual(code, 0, out)
        self.assertIn("positions 4..7", out)

    def test_witness(self):
        events = make_events()
        witness = [checkpoint(events, 3), checkpoint(events, 6), checkpoint(events, 6),
                   {**checkpoint(events, 7), "position": 9}]  # beyond `to`: not checked
        run = Run(self, log_export())
        path = run.path.with_name("witness.ndjson")
        path.write_text("".join(line + "\n" for line in dump(witness)) + "\n")
        code, out = self.verdict(log_export(), *PINNED, "--witness", str(path))
        self.assertEqual(code, 0, out)
        self.assertIn("witness: 3 checkpoints matched, the latest witnessed position is 9", out)

        # A witnessed checkpoint of another history, at a position the export covers.
        forked = make_events(change_payload_of=5)
        path.write_text("".join(line + "\n" for line in dump([checkpoint(forked, 5)])))
        self.assertFails(log_export(), "FAILED at position 5: rewritten: witness line 1",
                         *PINNED, "--witness", str(path))
        path.write_text(dump([checkpoint(events, 5, OTHER_KEY)])[0] + "\n")
        self.assertFails(log_export(), "FAILED at position 5: unknown-key: witness line 1",
                         *PINNED, "--witness", str(path))
        self.assertEqual(self.verdict(log_export(), *PINNED, "--witness", str(path) + ".no")[0], 3)
        path.write_text("not json\n")
        self.assertEqual(self.verdict(log_export(), *PINNED, "--witness", str(path))[0], 2)

    def test_usage_and_unreadable(self):
        bad_kid = {**KEY.json, "kid": OTHER_KEY.kid}
        self.assertEqual(self.verdict(log_export(), "--public-key", json.dumps(bad_kid))[0], 2)
        self.assertEqual(self.verdict(log_export(), "--public-key", "/no/such/key.json")[0], 2)
        self.assertEqual(self.verdict(log_export(), "--format", "protobuf")[0], 2)
        self.assertEqual(self.verdict(log_export(), "--bogus")[0], 2)
        result = subprocess.run([sys.executable, str(SCRIPT), "/no/such/export.ndjson"],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 3, result.stdout + result.stderr)


class TenantExport(Verdicts):
    def test_intact(self):
        code, out = self.verdict(tenant_export())
        self.assertEqual(code, 0, out)
        self.assertEqual(out.splitlines()[:2], [
            "verified 3 events, 1 checkpoints, positions 1..7",
            "unsigned tail: 1 events after the checkpoint at position 6"])
        for tenant, at in ((T1, 6), (T1, 3), (T2, 3)):
            code, out = self.verdict(tenant_export(tenant, at))
            self.assertEqual(code, 0, out)

    def test_proof_tampered(self):
        lines = tenant_export()
        item = json.loads(lines[3])
        self.assertEqual(len(item["proof"]["path"]), 2)
        for change in ("path0", "path1", "leaf_index", "tree_size", "short"):
            with self.subTest(change=change):
                bad = json.loads(lines[3])
                proof = bad["proof"]
                if change.startswith("path"):
                    index = int(change[-1])
                    proof["path"][index] = change_byte(proof["path"][index], 10)
                elif change == "short":
                    proof["path"].pop()
                elif change == "leaf_index":
                    proof[change] += 1
                else:  # a larger tree_size can verify too (RFC 9162: it is not bound by
                    proof[change] -= 1  # the path); the leaf still is in the signed tree
                self.assertFails(lines[:3] + [json.dumps(bad)] + lines[4:],
                                 "FAILED at position 6: rewritten: ")

    def test_tenant_head_not_the_event(self):
        lines = tenant_export()
        bad = json.loads(lines[3])
        bad["tenant_head"]["hash"] = change_byte(bad["tenant_head"]["hash"], 0)
        self.assertFails(lines[:3] + [json.dumps(bad)] + lines[4:],
                         "FAILED at position 5: rewritten: ")
        bad = json.loads(lines[3])
        bad["tenant_head"]["tenant_id"] = T1
        self.assertFails(lines[:3] + [json.dumps(bad)] + lines[4:],
                         "FAILED at position 6: rewritten: ")

    def test_checkpoint_before_its_event(self):
        lines = tenant_export()
        self.assertFails(lines[:2] + [lines[3], lines[2]] + lines[4:],
                         "FAILED at position 5: truncated: ")

    def test_event_removed_or_edited(self):
        lines = tenant_export()
        self.assertFails(lines[:2] + lines[3:], "FAILED at position 5: truncated: ")  # e5
        self.assertFails(lines[:4] + lines[5:], "FAILED at position 5: truncated: ")  # e7
        self.assertFails(lines[:1] + lines[2:], "FAILED at position 5: edited: ")
        lines[2] = change_byte(lines[2], lines[2].index('"amount":') + 10)
        self.assertFails(lines, "FAILED at position 5: edited: ")

    def test_events_swapped(self):
        lines = tenant_export()
        self.assertFails(lines[:1] + [lines[2], lines[1]] + lines[3:],
                         "FAILED at position 5: reordered: ")

    def test_witness(self):
        events, forked = make_events(), make_events(change_payload_of=1)
        run = Run(self, tenant_export())
        path = run.path.with_name("witness.ndjson")
        # 3 and 6 are not the tenant's positions: not covered; 5 is, and must match.
        path.write_text("".join(line + "\n" for line in dump(
            [checkpoint(events, 3), checkpoint(events, 5), checkpoint(events, 6)])))
        code, out = self.verdict(tenant_export(), *PINNED, "--witness", str(path))
        self.assertEqual(code, 0, out)
        self.assertIn("witness: 1 checkpoints matched", out)
        path.write_text(dump([checkpoint(forked, 5)])[0] + "\n")
        self.assertFails(tenant_export(), "FAILED at position 5: rewritten: witness line 1",
                         *PINNED, "--witness", str(path))

    def test_foreign_event(self):
        events = make_events()
        lines = tenant_export()
        foreign = dump([events[3]])[0]  # T1's event 4, between T2's 2 and 5
        self.assertFails(lines[:2] + [foreign] + lines[2:], "FAILED at position 4: edited: ")


if __name__ == "__main__":
    unittest.main(verbosity=2)
