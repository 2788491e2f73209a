#!/usr/bin/env python3
"""Verify a Tombola raffle's hash chain and draw from its exported event log alone.

An independent implementation of docs/AUDIT.md, in the Python standard library only, so
that anyone can check a raffle without trusting Tombola's code:

    curl -H "Authorization: Bearer $KEY" $API/v1/raffles/$RAFFLE/exports/events.ndjson > log.ndjson
    python3 tools/verify_draw.py log.ndjson

Prints one JSON object (the recomputed winners, and whether the chain, the seed and the
recorded winners check out) and exits 0 only if everything verifies.
"""

import hashlib
import json
import sys
from datetime import datetime, timezone

GENESIS = "0" * 64
MASK32 = 0xFFFFFFFF


# --- the hash chain -------------------------------------------------------------------

def compact(value):
    """The compact JSON Tombola writes (serde_json's escaping, UTF-8 kept as is)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def event_hash(line, metadata):
    chained = compact({k: metadata[k] for k in sorted(metadata) if k != "hash"})
    parts = [
        "tombola-chain-v1",
        metadata["prev_hash"],
        "raffle",
        line["raffle_id"],
        str(line["sequence"]),
        line["event_type"],
        line["event_version"],
        compact(line["payload"]),
    ]
    data = "".join(part + "\n" for part in parts) + chained
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


# --- ChaCha20 (RFC 8439 block function; 64-bit block counter, stream 0) -----------------

def _rotl(x, n):
    return ((x << n) & MASK32) | (x >> (32 - n))


def _quarter(s, a, b, c, d):
    s[a] = (s[a] + s[b]) & MASK32; s[d] = _rotl(s[d] ^ s[a], 16)
    s[c] = (s[c] + s[d]) & MASK32; s[b] = _rotl(s[b] ^ s[c], 12)
    s[a] = (s[a] + s[b]) & MASK32; s[d] = _rotl(s[d] ^ s[a], 8)
    s[c] = (s[c] + s[d]) & MASK32; s[b] = _rotl(s[b] ^ s[c], 7)


class ChaCha20Words:
    """32-bit output words of ChaCha20 keyed by `key` (32 bytes), counter from 0."""

    def __init__(self, key):
        self.key = [int.from_bytes(key[i:i + 4], "little") for i in range(0, 32, 4)]
        self.counter = 0
        self.buffer = []

    def _block(self):
        constants = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574]
        counter = [self.counter & MASK32, self.counter >> 32]
        state = constants + self.key + counter + [0, 0]
        working = list(state)
        for _ in range(10):
            _quarter(working, 0, 4, 8, 12); _quarter(working, 1, 5, 9, 13)
            _quarter(working, 2, 6, 10, 14); _quarter(working, 3, 7, 11, 15)
            _quarter(working, 0, 5, 10, 15); _quarter(working, 1, 6, 11, 12)
            _quarter(working, 2, 7, 8, 13); _quarter(working, 3, 4, 9, 14)
        self.counter += 1
        return [(w + s) & MASK32 for w, s in zip(working, state)]

    def next_u32(self):
        if not self.buffer:
            self.buffer = self._block()
        return self.buffer.pop(0)

    def next_u64(self):
        low = self.next_u32()
        return low | (self.next_u32() << 32)


def uniform(rng, n):
    zone = ((2 ** 64 - 1) // n) * n
    while True:
        word = rng.next_u64()
        if word < zone:
            return word % n


# --- the draw -----------------------------------------------------------------------

def unix_seconds(text):
    """Whole Unix seconds of an RFC 3339 UTC time (fractions dropped)."""
    whole = text.rstrip("Z").split(".")[0]
    moment = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def draw(seed, entropy, prizes, issued):
    """`issued`: {number: issue time in whole seconds}. Winners as (prize index, number)."""
    rng = ChaCha20Words(hashlib.sha256(seed.encode() + entropy.encode()).digest())
    by_cutoff, won, winners = {}, set(), []
    for index, prize in enumerate(prizes):
        cutoff = prize.get("early_bird_cutoff")
        cutoff = None if cutoff is None else unix_seconds(cutoff)
        if cutoff not in by_cutoff:
            by_cutoff[cutoff] = sorted(
                n for n, at in issued.items() if cutoff is None or at < cutoff)
        candidates = by_cutoff[cutoff]
        if all(n in won for n in candidates):
            continue
        while True:
            number = candidates[uniform(rng, len(candidates))]
            if number not in won:
                won.add(number)
                winners.append((index, number))
                break
    return winners


def verify(lines):
    prev, expected, chain_break = GENESIS, 1, None
    prizes, commitment, drawn = [], None, None
    issued_by_order = {}  # order id -> (numbers, issue time)
    for line in lines:
        metadata = line["metadata"]
        if line["sequence"] != expected:
            chain_break = f"event {expected} is missing"
        elif metadata["prev_hash"] != prev:
            chain_break = f"event {expected} does not link to the one before"
        elif event_hash(line, metadata) != metadata["hash"]:
            chain_break = f"event {expected} was changed"
        if chain_break:
            break
        prev, expected = metadata["hash"], expected + 1
        if drawn is not None:
            continue
        (kind, body), = line["payload"].items()
        if kind == "RaffleCreated":
            prizes = body["config"]["prizes"]
            commitment = body["config"]["draw_commitment"]
        elif kind == "TicketsIssued":
            issued_by_order[body["order_id"]] = (body["numbers"], unix_seconds(body["at"]))
        elif kind == "OrderRefunded":
            issued_by_order.pop(body["order_id"], None)
        elif kind == "RaffleCancelled":
            issued_by_order.clear()
        elif kind == "WinnersDrawn":
            drawn = body
    result = {"chain_intact": chain_break is None, "chain_break": chain_break, "drawn": drawn is not None}
    if drawn is None:
        result["verified"] = False
        return result
    issued, owners = {}, {}
    for order_id, (numbers, at) in issued_by_order.items():
        for number in numbers:
            issued[number], owners[number] = at, order_id
    winners = [
        {"prize_index": index, "prize": prizes[index]["name"], "number": number,
         "order_id": owners[number]}
        for index, number in draw(drawn["seed"], drawn["public_entropy"], prizes, issued)
    ]
    seed_ok = hashlib.sha256(drawn["seed"].encode()).hexdigest() == (commitment or "").lower()
    result.update({
        "seed_matches_commitment": seed_ok,
        "winners": winners,
        "recorded": drawn["winners"],
        "verified": chain_break is None and seed_ok and winners == drawn["winners"],
    })
    return result


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else "-"
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")
    with stream:
        result = verify(json.loads(line) for line in stream if line.strip())
    print(json.dumps(result, ensure_ascii=False))
    sys.exit(0 if result["verified"] else 1)


if __name__ == "__main__":
    main()
