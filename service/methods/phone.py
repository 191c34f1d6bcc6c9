"""Phone numbers: E.164 validation with ``phonenumbers`` and the masked form shown to people."""

from __future__ import annotations

import phonenumbers

from service.domain import InvalidPhone


def normalize_e164(raw: str) -> str:
    """The number in E.164, or InvalidPhone. Only full international numbers are accepted."""
    text = raw.strip()
    if not text.startswith("+"):
        raise InvalidPhone("The phone number must be in E.164 form, e.g. +8613800005678.")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        raise InvalidPhone("The phone number could not be parsed.") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("The phone number is not a valid number for its country.")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def mask(e164: str) -> str:
    """``+86 138****5678``: country code, the first three and the last four national digits."""
    number = phonenumbers.parse(e164, None)
    national = str(number.national_number)
    keep_head, keep_tail = (3, 4) if len(national) >= 9 else (1, 2)
    hidden = len(national) - keep_head - keep_tail
    return f"+{number.country_code} {national[:keep_head]}{'*' * hidden}{national[-keep_tail:]}"
