"""Dashboard sign-in: how long one Argon2id verify takes with the parameters Rapport uses
(engine/users.py: RFC 9106's low-memory profile, t=3, m=64 MiB, p=4), p50 and p95.

Verifies a stored hash ``--rounds`` times one after another, then the same number spread
over ``--at-once`` threads (engine.users.HASHING_AT_ONCE: what a process computes at once
during a burst of sign-ins), and prints each one's p50/p95 in milliseconds with the machine's
CPU count. The server adds a Redis read or two to this; the hash is nearly all of a sign-in.

    .venv/bin/python -m bench.login --rounds 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from engine.users import HASHER, HASHING_AT_ONCE

PASSWORD = "a long enough passphrase"  # noqa: S105  (what is hashed, not a credential)


def timed_verify(stored: str) -> float:
    started = time.perf_counter()
    HASHER.verify(stored, PASSWORD)
    return (time.perf_counter() - started) * 1000


def summary(name: str, samples: list[float]) -> str:
    cuts = statistics.quantiles(samples, n=20)
    return f"{name:<28} p50 {statistics.median(samples):7.1f} ms   p95 {cuts[18]:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--at-once", type=int, default=HASHING_AT_ONCE)
    args = parser.parse_args()
    stored = HASHER.hash(PASSWORD)
    params = f"t={HASHER.time_cost} m={HASHER.memory_cost // 1024} MiB p={HASHER.parallelism}"
    print(f"Argon2id {params}, {os.cpu_count()} CPUs")
    timed_verify(stored)  # warm-up
    print(summary("one at a time", [timed_verify(stored) for _ in range(args.rounds)]))
    with ThreadPoolExecutor(args.at_once) as pool:
        together = list(pool.map(timed_verify, [stored] * args.rounds))
    print(summary(f"{args.at_once} at once (each)", together))


if __name__ == "__main__":
    main()
