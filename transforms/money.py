"""Currency tables for the `money` op: USD per major unit, and ISO 4217 minor-unit exponents.

Amounts in logs are in minor units (cents): `_usd = amount / 10**exponent * rate`. The default rates are the
original's 2014 table (dpipe `als/global.go`), kept so that old archives decorate as they did; give current
rates in the job YAML (`money: {rates: {EUR: 1.08, ...}}`) for anything that matters.
"""

from __future__ import annotations

DEFAULT_RATES: dict[str, float] = {
    "USD": 1.0, "EUR": 1.35, "GBP": 1.6, "CHF": 1.09902, "CAD": 0.97, "AUD": 0.94, "NZD": 0.84,
    "SGD": 0.802761, "BRL": 0.45, "TRY": 0.503221, "PEN": 0.36049, "PLN": 0.32, "MYR": 0.32, "ILS": 0.282239,
    "AED": 0.272257, "SAR": 0.27, "DKK": 0.18, "ARS": 0.17, "NOK": 0.166719, "VEF": 0.16, "SEK": 0.154521,
    "HKD": 0.128961, "GTQ": 0.12550, "ZAR": 0.100801, "MXN": 0.078, "CZK": 0.052, "TWD": 0.034031,
    "THB": 0.032, "RUB": 0.030961, "PHP": 0.023, "INR": 0.016, "HUF": 0.0045, "CLP": 0.002007, "COP": 0.00053,
    "IDR": 0.00009, "VND": 0.000047,
}

# ISO 4217 exponents that are not 2 (the default)
EXPONENTS: dict[str, int] = {
    "JPY": 0, "KRW": 0, "VND": 0, "CLP": 0, "ISK": 0, "PYG": 0, "UGX": 0, "XAF": 0, "XOF": 0,
    "BHD": 3, "KWD": 3, "OMR": 3, "JOD": 3, "TND": 3, "LYD": 3, "IQD": 3,
}
