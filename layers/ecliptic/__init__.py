"""Ecliptic: paid, beat-synced video montages on AWS Lambda and Step Functions."""

__version__ = "0.1.0"
