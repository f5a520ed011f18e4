"""Privacy: redact personal information, replaced by typed placeholders.

Detected (regular expressions plus a validity check each):

=============  ===============  ==========================================================
kind           placeholder      what matches
=============  ===============  ==========================================================
email          ``<EMAIL>``      ``name@host.tld``
credit_card    ``<CREDIT_CARD>``  13-19 digits (spaces/dashes allowed) passing the Luhn check
ssn            ``<SSN>``        US social security numbers ``ddd-dd-dddd`` (valid areas)
phone          ``<PHONE>``      ``+CC`` optional, then 3 digit groups separated by space, dot
                                or dash (or an area code in parentheses), 9-15 digits in all
ip_address     ``<IP_ADDRESS>``  IPv4 dotted quads (each octet <= 255, not part of a longer
                                dotted number such as a version) and IPv6 addresses
=============  ===============  ==========================================================

Dates (2023-01-15), versions (3.11.7), prices and ordinary numbers are left alone; the
tests hold documents of both kinds.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Callable, Dict, List, Sequence, Tuple

import gin

from jaxlm.data.cleaning import Result, Stage

PLACEHOLDERS = {"email": "<EMAIL>", "credit_card": "<CREDIT_CARD>", "ssn": "<SSN>",
                "phone": "<PHONE>", "ip_address": "<IP_ADDRESS>"}

EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD_RE = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
SSN_RE = re.compile(r"(?<![\d-])(\d{3})-(\d{2})-(\d{4})(?![\d-])")
PHONE_RE = re.compile(r"(?<!\d[ .-])(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])"
                      r"\d{3,4}[ .-]\d{3,4}(?![\w .-]?\d)")
IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
  total, parity = 0, len(digits) % 2
  for i, ch in enumerate(digits):
    d = int(ch)
    if i % 2 == parity:
      d = d * 2 - 9 if d > 4 else d * 2
    total += d
  return total % 10 == 0


def _digits(s: str) -> str:
  return "".join(c for c in s if c.isdigit())


def _valid_card(m: re.Match) -> bool:
  d = _digits(m.group())
  return 13 <= len(d) <= 19 and len(set(d)) > 1 and luhn_valid(d)


def _valid_ssn(m: re.Match) -> bool:
  area, group, serial = m.groups()
  return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def _valid_phone(m: re.Match) -> bool:
  return 9 <= len(_digits(m.group())) <= 15


def _valid_ipv4(m: re.Match) -> bool:
  return all(int(part) <= 255 for part in m.group().split("."))


def _valid_ipv6(m: re.Match) -> bool:
  text = m.group()
  if sum(c in "0123456789abcdefABCDEF" for c in text) < 4:
    return False
  try:
    ipaddress.IPv6Address(text)
  except ValueError:
    return False
  return True


# Order matters: e-mails may contain digits, card numbers look like phone numbers.
DETECTORS: List[Tuple[str, re.Pattern, Callable[[re.Match], bool]]] = [
    ("email", EMAIL_RE, lambda m: True),
    ("credit_card", CARD_RE, _valid_card),
    ("ssn", SSN_RE, _valid_ssn),
    ("ip_address", IPV4_RE, _valid_ipv4),
    ("ip_address", IPV6_RE, _valid_ipv6),
    ("phone", PHONE_RE, _valid_phone),
]


def redact(text: str, kinds: Sequence[str] = tuple(PLACEHOLDERS)) -> Tuple[str, Dict[str, int]]:
  """(redacted text, {kind: number replaced})."""
  counts: Dict[str, int] = {}
  for kind, pattern, valid in DETECTORS:
    if kind not in kinds:
      continue

    def replace(m, kind=kind, valid=valid):
      if not valid(m):
        return m.group()
      counts[kind] = counts.get(kind, 0) + 1
      return PLACEHOLDERS[kind]

    text = pattern.sub(replace, text)
  return text, counts


@gin.configurable
class PIIRedactor(Stage):
  """Replace e-mails, phone numbers, IP addresses, card and social security numbers."""
  name = "pii"

  def __init__(self, kinds: Sequence[str] = tuple(PLACEHOLDERS)):
    unknown = set(kinds) - set(PLACEHOLDERS)
    if unknown:
      raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}")
    self.kinds = tuple(kinds)

  def process(self, text):
    out, counts = redact(text, self.kinds)
    return Result(out, edits=counts)
