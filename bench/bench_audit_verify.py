"""Benchmark: write and verify an audit export bundle of N realistic entries.

    python -m bench.bench_audit_verify [--entries N] [--full-parse]

Targets (issue 3): verify 1,000,000 entries in <= 5 s on one core; write >= 200,000 entries/s
with peak memory < 150 MB. Baselines measured in the same run make the figures comparable
across machines: generating the lines alone, and raw hashlib.sha256 over every line of the file.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.bundle import write_bundle
from audit.checkpoint import CheckpointSigner
from audit.entry import AuditEvent, EntryKind, decode_entry, encode_entry
from audit.merkle import CompactRange
from audit.verify import ENTRIES_FILE, verify_bundle

ORIGIN = "fairunlock.example.com/audit"
TEMPLATES = 512


def _templates() -> list[tuple[bytes, bytes]]:
    """Real canonical entries split around their index, so line i = head + str(i) + tail.

    Encoding a million events through rfc8785 would dominate the run; since the index occurs
    exactly once in a canonical entry, substituting it gives the bytes encode_entry would.
    """
    base = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)
    kinds = list(EntryKind)
    templates = []
    for n in range(TEMPLATES):
        event = AuditEvent(
            kind=kinds[n % len(kinds)],
            actor=f"api-key:service-{n % 7}",
            subject=hashlib.sha256(f"account {n}".encode()).hexdigest()[:32],
            data={
                "request_id": hashlib.md5(str(n).encode(), usedforsecurity=False).hexdigest()[:16],
                "method": ["totp", "email_link", "recovery_code", "review"][n % 4],
                "outcome": ["success", "failure", "pending"][n % 3],
                "attempt": n % 5 + 1,
                "enc": hashlib.sha512(str(n).encode()).hexdigest()[:40],
            },
            time=base + timedelta(microseconds=n * 1_000_003),
        )
        line = encode_entry(999_999_999, ORIGIN, event)
        head, tail = line.split(b'"index":999999999', 1)
        templates.append((head + b'"index":', tail))
    return templates


def _entries(count: int, templates: list[tuple[bytes, bytes]], start: int = 0) -> Iterator[bytes]:
    size = len(templates)
    for index in range(start, start + count):
        head, tail = templates[index % size]
        yield b"%s%d%s" % (head, index, tail)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


T = TypeVar("T")


def _timed(work: Callable[[], T]) -> tuple[float, float, T]:
    """(wall seconds, CPU seconds of this process, result): CPU time shows what a busy machine
    hides, wall time is what the targets are about."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _hash_lines(path: Path) -> None:
    with path.open("rb") as handle:
        for line in handle:
            hashlib.sha256(line).digest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_audit_verify")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--full-parse", action="store_true", help="verify with json.loads too")
    args = parser.parse_args(argv)
    count: int = args.entries

    templates = _templates()
    for sample in (0, 1, count - 1):  # the substitution really yields canonical entries
        line = next(_entries(1, templates, start=sample))
        assert decode_entry(line)["index"] == sample
    signer = CheckpointSigner(ORIGIN, Ed25519PrivateKey.generate())
    rss_before = _peak_rss_mb()
    load_before = os.getloadavg()[0]

    generate = _timed(lambda: collections.deque(_entries(count, templates), maxlen=0))
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        bundle = Path(tmp) / "bundle"
        write = _timed(
            lambda: write_bundle(
                bundle,
                _entries(count, templates),
                start=0,
                prefix=CompactRange.empty(),
                signer=signer,
                origin=ORIGIN,
                purpose="benchmark",
            )
        )
        rss_after_write = _peak_rss_mb()
        file_mb = write[2].files[ENTRIES_FILE].bytes / 1e6
        sha = _timed(lambda: _hash_lines(bundle / ENTRIES_FILE))
        verify = _timed(
            lambda: verify_bundle(bundle, signer.public_key, full_parse=args.full_parse)
        )
        assert verify[2].end == count
        rss_after_verify = _peak_rss_mb()

    verify_name = "verify_bundle" + (" --full-parse" if args.full_parse else "")
    rows = [
        ("baseline: generate lines only", generate, ""),
        ("baseline: sha256 per line of file", sha, ""),
        ("write_bundle", write, f"{write[0] / generate[0]:.1f}x generate"),
        (verify_name, verify, f"{verify[0] / sha[0]:.1f}x sha256"),
    ]
    print(f"{count:,} entries, {file_mb:.0f} MB entries.jsonl ({file_mb * 1e6 / count:.0f} B/line)")
    print(
        f"Python {sys.version.split()[0]}, one process, one thread; "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print(f"{'step':<38} {'wall s':>7} {'cpu s':>7} {'entries/s':>11}  ratio (wall)")
    for name, (wall, cpu, _), ratio in rows:
        print(f"{name:<38} {wall:7.2f} {cpu:7.2f} {count / wall:11,.0f}  {ratio}")
    print(
        f"peak RSS: {rss_before:.0f} MB before, {rss_after_write:.0f} MB after write, "
        f"{rss_after_verify:.0f} MB after verify"
    )
    write_ok = count / write[0] >= 200_000 and rss_after_write < 150
    verify_ok = verify[0] <= 5 * count / 1_000_000
    print(
        f"targets (wall): write >= 200k/s and < 150 MB: {'met' if write_ok else 'MISSED'}; "
        f"verify <= 5 s per 1M: {'met' if verify_ok else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
