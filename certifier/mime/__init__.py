"""The MIME library of Certifica: raw messages read linearly, strictly and without recursion.

Every part of the gateway that reads a message goes through here, so they all see the
same header fields, the same parts and the same addresses: the certificate's summary
(:mod:`certifier.message`), the tracking rewrite (:mod:`addendum.inject`), the sender
checks of the submission and certified-copy intakes, the reception intake, the fields
added to the outgoing copy (``relay.delivery.outbound``), and the CLI.

Standards, by module:

- :mod:`certifier.mime.headers`: RFC 5322 section 2.2 (header section, unfolding),
  RFC 6532 (UTF-8 header fields), RFC 2045 section 5 and RFC 2231 (``Content-Type``
  and its parameters, continuations and charsets), RFC 2183 (``Content-Disposition``).
- :mod:`certifier.mime.body`: RFC 2046 section 5.1 (multipart boundaries) and RFC 2045
  section 6 (``Content-Transfer-Encoding``); RFC 2049 section 2 (conformance): every
  multipart subtype is split as ``multipart/mixed`` would be, and a body in an unknown
  transfer encoding is kept as sent, like ``application/octet-stream``.
- :mod:`certifier.mime.text`: RFC 2047 (encoded words, decoded for display only),
  charsets (RFC 2045/2046, WHATWG Encoding Standard fallbacks), strings safe to show
  on one line.
- :mod:`certifier.mime.addresses`: RFC 5322 section 3.4 (address lists, mailboxes,
  groups) and RFC 6532 (UTF-8 addresses), strict, with the stdlib as second opinion.

Why not ``email.parser``: on Python 3.11 the feed parser raises ``RecursionError`` on
1000-deep multipart nesting and scans every line against every open boundary;
``Message.get_param`` is quadratic in the length of a parameter; the address parsers in
``email.utils`` and ``email.headerregistry`` recurse once per nested comment, and
``getaddresses`` misparsed addresses (CVE-2023-27043). So the MIME structure, header
fields and parameters are read here by linear, iterative code over the raw bytes.

Errors: the readers never raise on the content of a message; what cannot be read as the
standards say is a plain-English sentence in a :class:`~certifier.mime.text.Defects`
list, or (for addresses) an answer of ``None`` or ``[]``.
"""

from certifier.mime.addresses import (
    MAX_ADDRESSES,
    MAX_MAILBOX_CHARS,
    PLAIN_ADDR_SPEC,
    AddressList,
    Mailbox,
    from_addresses,
    header_addresses,
    header_from_addresses,
    parse_address_list,
    parse_single_mailbox,
    strict_mailbox_ok,
)
from certifier.mime.body import Split, decode_transfer, split_multipart
from certifier.mime.headers import (
    PART_FIELDS,
    PartHeaders,
    field_name,
    header_end,
    header_fields,
    header_str,
    parse_structured,
    part_headers,
    read_headers,
    split_semicolons,
)
from certifier.mime.text import (
    Defects,
    body_text,
    codec_for,
    cut,
    decode_charset,
    decode_words,
    no_surrogates,
    one_line,
)

__all__ = [
    "MAX_ADDRESSES",
    "MAX_MAILBOX_CHARS",
    "PART_FIELDS",
    "PLAIN_ADDR_SPEC",
    "AddressList",
    "Defects",
    "Mailbox",
    "PartHeaders",
    "Split",
    "body_text",
    "codec_for",
    "cut",
    "decode_charset",
    "decode_transfer",
    "decode_words",
    "field_name",
    "from_addresses",
    "header_addresses",
    "header_end",
    "header_fields",
    "header_from_addresses",
    "header_str",
    "no_surrogates",
    "one_line",
    "parse_address_list",
    "parse_single_mailbox",
    "parse_structured",
    "part_headers",
    "read_headers",
    "split_multipart",
    "split_semicolons",
    "strict_mailbox_ok",
]
