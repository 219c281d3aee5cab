"""Hosted content and acceptance (docs/hosted.md): the recipients of a hosted message get a
notification with a link instead of the content, and the content is handed over, with
evidence, on the gateway's page (:mod:`relay.web.hosted`).

- :mod:`relay.hosted.modes`: the modes, how a sender asks for one, the links' tokens;
- :mod:`relay.certify.hosted_notification`: the notification and code mails;
- :mod:`relay.hosted.content`: the message as the page shows it (text, HTML, attachments).
"""
