"""Measure local x402 payment verification time per header.

Signs N payments (half x402 version 1, half version 2) with a throwaway key, then times
`verify_payment` on each and prints the median, 95th percentile and maximum. The target
is a median under 2 ms, so that verification is a small share of the API's latency.

Run: `.venv/bin/python bench/bench_x402.py [--count 500]`
"""

from __future__ import annotations

import argparse
import statistics
import time

from ecliptic.config import Settings
from ecliptic.x402.client import LocalPayer
from ecliptic.x402.verify import verify_payment

TARGET_MEDIAN_MS = 2.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="number of headers to verify")
    args = parser.parse_args()

    settings = Settings()
    payer = LocalPayer()
    now = int(time.time())
    headers = [
        dict([payer.payment_header(settings, version=1 + i % 2, now=now)])
        for i in range(args.count)
    ]

    # Signing has already imported eth-abi, eth-hash and coincurve. This call also fills
    # the domain-separator cache, so the loop measures a warm Lambda.
    verify_payment(headers[0], settings, now=now)

    durations_ms = []
    for header in headers:
        started = time.perf_counter()
        verify_payment(header, settings, now=now)
        durations_ms.append((time.perf_counter() - started) * 1000)

    durations_ms.sort()
    median = statistics.median(durations_ms)
    p95 = durations_ms[int(0.95 * (len(durations_ms) - 1))]
    print(f"headers verified:   {len(durations_ms)}")  # noqa: T201
    print(f"median per header:  {median:.3f} ms (target < {TARGET_MEDIAN_MS} ms)")  # noqa: T201
    print(f"95th percentile:    {p95:.3f} ms")  # noqa: T201
    print(f"maximum:            {durations_ms[-1]:.3f} ms")  # noqa: T201


if __name__ == "__main__":
    main()
