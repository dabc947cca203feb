"""Pay for one montage with the official x402 Python SDK and submit it.

The script sends `POST /montages` without payment, reads the 402 challenge, lets the
SDK sign an EIP-3009 USDC authorization for it and sends the request again with the
payment header. It prints the 202 body and the decoded settlement header.

Needs `pip install "x402[evm]" requests`. Against `ecliptic serve` (offline facilitator)
a throwaway key works:

    python examples/pay_and_submit.py --api http://127.0.0.1:8080 \\
        --audio https://cdn.example.com/song.mp3 --video https://cdn.example.com/clip.mp4

Against the deployed API, set PAYER_PRIVATE_KEY to the hex key of an account with at
least 0.02 USDC on the network named in the challenge.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import requests
from eth_account import Account
from eth_account.signers.local import LocalAccount
from x402 import x402ClientSync
from x402.http import x402HTTPClientSync
from x402.mechanisms.evm import V1_NETWORKS, EthAccountSigner
from x402.mechanisms.evm.exact import ExactEvmScheme
from x402.mechanisms.evm.exact.v1 import ExactEvmSchemeV1


def x402_client(account: LocalAccount) -> x402HTTPClientSync:
    """Return an SDK client that pays `exact` USDC requirements on any EVM network."""
    signer = EthAccountSigner(account)
    client = x402ClientSync()
    client.register("eip155:*", ExactEvmScheme(signer))  # x402 version 2 (CAIP-2 names)
    for network in V1_NETWORKS:  # x402 version 1 ("base", "base-sepolia", ...)
        client.register_v1(network, ExactEvmSchemeV1(signer))
    return x402HTTPClientSync(client)


def pay_and_submit(
    api_url: str, body: dict[str, Any], account: LocalAccount, *, x402_version: int = 2
) -> requests.Response:
    """Post `body` to `{api_url}/montages`, pay the 402 challenge and post it again.

    The API offers the terms three ways. With `x402_version=2` the SDK reads the
    `PAYMENT-REQUIRED` header and sends `PAYMENT-SIGNATURE`. With 1 it reads the JSON body
    and sends `X-PAYMENT`. Returns the response to the paid request.
    """
    url = f"{api_url.rstrip('/')}/montages"
    challenge = requests.post(url, json=body, timeout=30)
    if challenge.status_code != 402:
        return challenge  # a 400 names the field to fix before any payment is made

    headers = dict(challenge.headers)
    if x402_version == 1:
        headers.pop("PAYMENT-REQUIRED", None)
    payment_headers, _ = x402_client(account).handle_402_response(
        headers, challenge.content, url
    )
    return requests.post(url, json=body, headers=payment_headers, timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8080", help="API base URL")
    parser.add_argument("--audio", required=True, help="URL of the song")
    parser.add_argument("--video", required=True, action="append", help="clip URL; repeat")
    parser.add_argument("--prompt", help="creative brief")
    parser.add_argument("--x402-version", type=int, choices=[1, 2], default=2)
    args = parser.parse_args(argv)

    key = os.environ.get("PAYER_PRIVATE_KEY")
    account: LocalAccount = Account.from_key(key) if key else Account.create()
    body: dict[str, Any] = {
        "audio": {"url": args.audio},
        "videos": [{"url": url} for url in args.video],
    }
    if args.prompt:
        body["prompt"] = args.prompt

    response = pay_and_submit(args.api, body, account, x402_version=args.x402_version)
    if response.status_code != 202:
        sys.stderr.write(f"rejected with {response.status_code}: {response.text}\n")
        return 1

    # PAYMENT-RESPONSE (version 2) or X-PAYMENT-RESPONSE (version 1).
    settlement = x402_client(account).get_payment_settle_response(response.headers.get)
    result = {
        "payer": account.address,
        "job": response.json(),
        "settlement": settlement.model_dump(by_alias=True, exclude_none=True),
    }
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
