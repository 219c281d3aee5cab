"""Certified SMS: the pieces that send an SMS through an operator's SMSC.

One module per concern (docs/sms.md says what each does and what is wired next):

- :mod:`relay.sms.numbers`: the recipient, ``+34600111222@sms.<gateway domain>`` or a
  group, as an E.164 number (ITU-T E.164) or a refusal sentence for ``550 5.1.3``;
- :mod:`relay.sms.text`: the text of the SMS, taken from a mail message by a documented
  rule (RFC 3676 signatures, quoted replies);
- :mod:`relay.sms.encoding`: GSM 7-bit or UCS-2 and the segments with their UDH
  (3GPP TS 23.038 section 6.2.1, TS 23.040 section 9.2.3.24.1);
- :mod:`relay.sms.smpp`: the SMPP 3.4 session to the SMSC (bind, keep-alive,
  reconnect, submit window, outcomes of ``submit_sm``);
- :mod:`relay.sms.inbound`: what the SMSC sends back, delivery receipts (SMPP 3.4
  Appendix B and TLVs) and mobile-originated messages.

Configuration: ``[sms]`` in relay/config.py (README, "Certified SMS (in progress)").
"""
