"""x402 payment guard: decoding, local verification, facilitator settlement."""
