"""`money`: `_usd` from an amount in minor units and a currency, or a `_usd_err` tag; never a drop."""

from __future__ import annotations

from typing import Annotated

import pyarrow as pa
from pydantic import Field

from transforms.decoration.base import Op, OpError, OpSection, decorations
from transforms.event import MISSING, Event
from transforms.fields import DottedKey, compile_getter, is_number
from transforms.money import DEFAULT_RATES, EXPONENTS


class MoneyOp(Op):
    """`_usd` = amount / 10**exponent(currency) * rate(currency): USD, from an amount in minor units."""

    name = "money"

    def __init__(self, amount: str, currency: str, rates: dict[str, float], exponents: dict[str, int]) -> None:
        self.amount_key, self.get_amount = amount, compile_getter(amount)
        self.get_currency = compile_getter(currency)
        self.factor = {c: r / 10 ** exponents.get(c, 2) for c, r in rates.items()}

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        amount = self.get_amount(event.fields)
        if amount is MISSING or amount is None:
            return
        if not is_number(amount):
            raise OpError(f"money: {self.amount_key} is not a number", f"got {type(amount).__name__}: {amount!r:.80}")
        currency = self.get_currency(event.fields)
        if currency is MISSING or currency is None:
            decorations(event)["_usd_err"] = "currency missing"
            return
        factor = self.factor.get(currency) if type(currency) is str else None
        if factor is None:
            decorations(event)["_usd_err"] = f"currency unknown: {currency}"
            return
        decorations(event)["_usd"] = round(amount * factor, 6)

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [("_usd", pa.float64()), ("_usd_err", pa.string())]


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class MoneyConfig(OpSection):
    amount: DottedKey = "data.amount"
    currency: DottedKey = "data.currency"
    rates: dict[Currency, Annotated[float, Field(gt=0)]] | None = None
    exponents: dict[Currency, Annotated[int, Field(ge=0, le=4)]] = {}

    def build(self) -> Op:
        return MoneyOp(self.amount, self.currency, self.rates or DEFAULT_RATES, {**EXPONENTS, **self.exponents})
