"""Settlement of verified payments through an x402 facilitator.

`HttpFacilitator` calls a facilitator's `POST /verify`, then `POST /settle`. Failures map
to our errors so that the API never responds to an unknown settlement outcome with a
fresh 402, which would make the client sign and pay a second time:

- The facilitator rejects the payment (`isValid: false`, `success: false`):
  `PaymentRequired` with the facilitator's reason as `code`.
- Nothing was settled (verify fails, a settle request never connects, a 4xx without a
  reason): `ServiceUnavailable`.
- The outcome is unknown or not final (`settlement_pending`, a settle request that timed
  out after it was sent, a 5xx without a reason): `PaymentPending`. Retrying with the
  same payment is safe because the token contract accepts each nonce once.

A retry of a payment whose outcome is unknown calls `settle(payment, reconcile=True)`,
which sends `/settle` again without `/verify`. Verification would fail once the first
transfer is on chain. A second settle of the same payload is how the x402 reference
facilitator reconciles with the transaction it already broadcast
(`settle_with_pending_retry` in the `x402` package, version 2.25).

`OfflineFacilitator` exists for local runs and moves no funds.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ValidationError

from ecliptic.errors import PaymentPending, PaymentRequired, ServiceUnavailable
from ecliptic.x402.eip712 import keccak256
from ecliptic.x402.messages import FacilitatorSettleResponse, FacilitatorVerifyResponse

if TYPE_CHECKING:
    import requests

    from ecliptic.config import Settings
    from ecliptic.x402.verify import VerifiedPayment

logger = logging.getLogger(__name__)

# Read timeout of each facilitator request, in seconds. A Base block takes about 2 s, and
# a facilitator may wait for the settle transaction's receipt before it responds.
DEFAULT_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 3.05

SETTLEMENT_PENDING = "settlement_pending"
# The code used when a facilitator rejects a payment without a usable reason.
FACILITATOR_REJECTED = "payment_rejected"
_REASON_CODE = re.compile(r"[a-z0-9_]{1,64}")

# Fixes for a facilitator's rejection, by reason code: the generic `insufficient_funds`
# and codes of the x402 reference facilitator (`x402` package, version 2.25).
_FIXES: dict[str, str] = {
    "insufficient_funds": "Fund the payer's address with the token on this network, then retry",
    "invalid_exact_evm_insufficient_balance": (
        "Fund the payer's address with the token on this network, then retry"
    ),
    "invalid_exact_evm_nonce_already_used": (
        "This authorization was already used on chain. Sign a new payment"
    ),
    "invalid_exact_evm_payload_authorization_valid_before": (
        "The authorization expired before it could be settled. Sign a new payment"
    ),
    "invalid_exact_evm_payload_authorization_valid_after": (
        "The authorization is not valid yet. Set validAfter to 0 or a past time"
    ),
    "invalid_exact_evm_payload_signature": (
        "Sign the TransferWithAuthorization again with the payer's key and the "
        "EIP-712 domain in `extra`"
    ),
}
_DEFAULT_FIX = "Check the payment against the requirements in this response and sign a new one"

# Receives the HTTP method and full URL of a request and returns headers to add, e.g.
# `{"Authorization": "Bearer <JWT>"}`. It runs once per request, because Coinbase CDP
# JWTs name the method and URL they are valid for and expire after two minutes.
AuthHeaderProvider = Callable[[str, str], Mapping[str, str]]


class Settlement(BaseModel):
    """The result of a successful settlement, as recorded on the job."""

    success: bool
    transaction: str
    network: str
    payer: str
    amount: str
    errorReason: str | None = None  # noqa: N815 (wire name)


@runtime_checkable
class Facilitator(Protocol):
    """Something that settles verified payments."""

    def settle(self, payment: VerifiedPayment, *, reconcile: bool = False) -> Settlement:
        """Settle `payment` and return the settlement, or raise.

        `reconcile=True` marks a retry of a settlement whose outcome is unknown, which
        must not verify again.

        Raises
        ------
        PaymentRequired
            The payment was rejected, and `code` is the reason.
        PaymentPending
            Settlement was sent but is not confirmed.
        ServiceUnavailable
            The facilitator could not be used, and nothing was settled.
        """
        ...


class OfflineFacilitator:
    """A facilitator for local runs that checks nothing further and broadcasts nothing.

    The transaction is `0x` + keccak256(payer address bytes || nonce bytes), which is
    stable for a payment but names no real transaction, and the network is the payment's
    network prefixed with `offline:` (e.g. `offline:eip155:8453`), so a recorded payment
    shows that it was never settled. Never deploy with it: every locally valid signature,
    including one from an empty throwaway wallet, passes.
    """

    def settle(self, payment: VerifiedPayment, *, reconcile: bool = False) -> Settlement:
        """Return a successful settlement without any network call."""
        logger.warning(
            "Offline facilitator: payment of %s from %s was not broadcast, no funds moved",
            payment.value,
            payment.payer,
        )
        digest = keccak256(bytes.fromhex(payment.payer[2:]) + bytes.fromhex(payment.nonce[2:]))
        return Settlement(
            success=True,
            transaction="0x" + digest.hex(),
            network=f"offline:{payment.network}",
            payer=payment.payer,
            amount=payment.value,
        )


class HttpFacilitator:
    """A facilitator reached over HTTP (`POST {url}/verify`, then `POST {url}/settle`).

    Parameters
    ----------
    url
        Base URL without the endpoint, e.g. `https://api.cdp.coinbase.com/platform/v2/x402`.
    auth_header_provider
        Returns authentication headers per request. None for a facilitator without auth.
    timeout
        Read timeout of each request, in seconds. The connect timeout is the smaller of
        this and 3.05 s.
    """

    def __init__(
        self,
        url: str,
        auth_header_provider: AuthHeaderProvider | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        import requests

        self.url = url.rstrip("/")
        self._auth_header_provider = auth_header_provider
        self._timeout = (min(CONNECT_TIMEOUT_SECONDS, timeout), timeout)
        self._session = requests.Session()

    def settle(self, payment: VerifiedPayment, *, reconcile: bool = False) -> Settlement:
        """Verify, then settle `payment` with the facilitator.

        With `reconcile=True` only `/settle` is sent (see the module docstring).

        Raises
        ------
        PaymentRequired
            The facilitator rejected the payment, and `code` is its reason.
        PaymentPending
            The settle call returned `settlement_pending`, or its outcome is unknown.
        ServiceUnavailable
            The facilitator failed before settlement started.
        """
        body = {
            "x402Version": payment.version,
            "paymentPayload": payment.payload,
            "paymentRequirements": payment.requirements,
        }

        if not reconcile:
            self._verify(payment, body)

        return self._settle(payment, body)

    def _verify(self, payment: VerifiedPayment, body: dict[str, Any]) -> None:
        import requests

        try:
            response = self._post("verify", body)
        except requests.RequestException as exc:
            logger.error("Facilitator verify failed for payer %s: %s", payment.payer, exc)
            raise ServiceUnavailable(
                "The payment facilitator did not respond. Retry the request with the same payment.",
                detail={"stage": "verify"},
            ) from exc

        data = _json_object(response)
        parsed = _parse(FacilitatorVerifyResponse, data)
        if parsed is not None and not parsed.isValid:
            reason = _reason_code(parsed.invalidReason)
            logger.warning(
                "Facilitator rejected payment from %s at verify: %s (HTTP %s)",
                payment.payer,
                reason,
                response.status_code,
            )
            raise PaymentRequired(
                f"The payment facilitator rejected the payment ({reason}). {_fix(reason)}.",
                code=reason,
                detail={"stage": "verify", "message": parsed.invalidMessage},
            )
        if response.status_code != 200 or parsed is None:
            logger.error(
                "Facilitator verify returned HTTP %s without a usable body",
                response.status_code,
            )
            raise ServiceUnavailable(
                "The payment facilitator failed. Retry the request with the same payment.",
                detail={"stage": "verify", "status": response.status_code},
            )
        if parsed.payer and parsed.payer.lower() != payment.payer:
            logger.warning(
                "Facilitator verify names payer %s, local recovery gave %s",
                parsed.payer,
                payment.payer,
            )

    def _settle(self, payment: VerifiedPayment, body: dict[str, Any]) -> Settlement:
        import requests

        try:
            response = self._post("settle", body)
        except requests.ConnectTimeout as exc:
            # No connection, so the facilitator never saw the request.
            logger.error("Facilitator settle could not connect: %s", exc)
            raise ServiceUnavailable(
                "The payment facilitator did not respond. Retry the request with the same payment.",
                detail={"stage": "settle"},
            ) from exc
        except requests.RequestException as exc:
            # The request may have reached the facilitator, which may have broadcast it.
            logger.error(
                "Facilitator settle outcome unknown for payer %s nonce %s: %s",
                payment.payer,
                payment.nonce,
                exc,
            )
            raise PaymentPending(
                "Settlement of the payment is not confirmed yet. Retry the request with the "
                "same payment in a few seconds; do not sign a new payment.",
                detail={"stage": "settle", "outcome": "unknown"},
            ) from exc

        data = _json_object(response)
        parsed = _parse(FacilitatorSettleResponse, data)
        if parsed is not None and parsed.errorReason == SETTLEMENT_PENDING:
            logger.warning(
                "Facilitator settlement pending for payer %s nonce %s, transaction %s",
                payment.payer,
                payment.nonce,
                parsed.transaction or "unknown",
            )
            known = f" (transaction {parsed.transaction})" if parsed.transaction else ""
            raise PaymentPending(
                f"Settlement of the payment is pending{known}. Retry the request with the same "
                "payment in a few seconds; do not sign a new payment.",
                detail={"stage": "settle", "transaction": parsed.transaction or None},
            )
        if parsed is not None and not parsed.success:
            reason = _reason_code(parsed.errorReason)
            logger.warning(
                "Facilitator rejected payment from %s at settle: %s (HTTP %s)",
                payment.payer,
                reason,
                response.status_code,
            )
            raise PaymentRequired(
                f"The payment facilitator could not settle the payment ({reason}). "
                f"{_fix(reason)}.",
                code=reason,
                detail={"stage": "settle", "message": parsed.errorMessage},
            )
        if response.status_code != 200 or parsed is None or not parsed.transaction:
            logger.error(
                "Facilitator settle returned HTTP %s without a usable body for payer %s nonce %s",
                response.status_code,
                payment.payer,
                payment.nonce,
            )
            if 400 <= response.status_code < 500:
                # The facilitator refused the request itself (e.g. authentication).
                raise ServiceUnavailable(
                    f"The payment facilitator rejected the request with HTTP "
                    f"{response.status_code}. Retry later with the same payment.",
                    detail={"stage": "settle", "status": response.status_code},
                )
            raise PaymentPending(
                "Settlement of the payment is not confirmed. Retry the request with the "
                "same payment in a few seconds; do not sign a new payment.",
                detail={"stage": "settle", "status": response.status_code, "outcome": "unknown"},
            )

        payer = (parsed.payer or payment.payer).lower()
        logger.info(
            "Payment settled: payer %s, transaction %s on %s",
            payer,
            parsed.transaction,
            parsed.network or payment.network,
        )
        return Settlement(
            success=True,
            transaction=parsed.transaction,
            network=parsed.network or payment.network,
            payer=payer,
            amount=parsed.amount or payment.value,
        )

    def _post(self, endpoint: str, body: dict[str, Any]) -> requests.Response:
        url = f"{self.url}/{endpoint}"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._auth_header_provider is not None:
            headers.update(self._auth_header_provider("POST", url))
        return self._session.post(
            url, json=body, headers=headers, timeout=self._timeout, allow_redirects=False
        )


def facilitator_from_settings(
    settings: Settings, *, auth_header_provider: AuthHeaderProvider | None = None
) -> Facilitator:
    """Return the offline facilitator when `settings.facilitator_mode` is `offline`, else HTTP.

    The HTTP facilitator authenticates with `auth_header_provider` when given, else with
    the CDP key that `settings.facilitator_credentials_secret_arn` names (a Secrets
    Manager secret or an SSM parameter, see `cdp_auth.auth_from_source`), else not at all.

    Raises
    ------
    ServiceUnavailable
        When the offline mode is configured inside a deployed Lambda function, or the
        facilitator credentials cannot be read or parsed.
    """
    if settings.facilitator_mode == "offline":
        # AWS sets AWS_LAMBDA_FUNCTION_NAME in every function; `sam local` also sets
        # AWS_SAM_LOCAL. A deployed function with the offline mode would give work away.
        if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") and not os.environ.get("AWS_SAM_LOCAL"):
            logger.error("The offline facilitator is configured in a deployed function")
            raise ServiceUnavailable(
                "Payments are not available: the service is misconfigured.",
                detail={"facilitator_mode": "offline"},
            )
        logger.warning("Using the offline facilitator: payments are checked but not settled")
        return OfflineFacilitator()

    if auth_header_provider is None and settings.facilitator_credentials_secret_arn:
        auth_header_provider = _auth_from_settings(settings)
    return HttpFacilitator(
        settings.facilitator_url, auth_header_provider, timeout=DEFAULT_TIMEOUT_SECONDS
    )


def _auth_from_settings(settings: Settings) -> AuthHeaderProvider:
    from aws_lambda_powertools.utilities.parameters.exceptions import (
        GetParameterError,
        GetSecretError,
        TransformParameterError,
    )

    from ecliptic.x402.cdp_auth import CdpCredentialsError, auth_from_source

    source = settings.facilitator_credentials_secret_arn or ""
    try:
        return auth_from_source(source)
    except (CdpCredentialsError, TransformParameterError) as exc:
        logger.error("Facilitator credentials in %s are unusable: %s", source, exc)
        raise ServiceUnavailable(
            "Payments are not available: the facilitator credentials are invalid.",
            detail={"stage": "credentials"},
        ) from exc
    except ImportError as exc:
        # `cryptography` signs the JWTs. layers/requirements.txt lists it, so only a broken
        # build gets here.
        logger.error("CDP authentication needs the cryptography package: %s", exc)
        raise ServiceUnavailable(
            "Payments are not available: the service is misconfigured.",
            detail={"stage": "credentials"},
        ) from exc
    except (GetParameterError, GetSecretError) as exc:
        logger.error("Facilitator credentials in %s could not be read: %s", source, exc)
        raise ServiceUnavailable(
            "Payments are temporarily unavailable. Retry the request later.",
            detail={"stage": "credentials"},
        ) from exc


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


_Parsed = TypeVar("_Parsed", FacilitatorVerifyResponse, FacilitatorSettleResponse)


def _parse(model: type[_Parsed], data: dict[str, Any] | None) -> _Parsed | None:
    if data is None:
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def _fix(reason: str) -> str:
    return _FIXES.get(reason, _DEFAULT_FIX)


def _reason_code(reason: str | None) -> str:
    # Pass on the facilitator's snake_case reason. Anything else becomes a generic code
    # so that no facilitator text reaches a response unchecked.
    if reason and _REASON_CODE.fullmatch(reason):
        return reason
    return FACILITATOR_REJECTED
