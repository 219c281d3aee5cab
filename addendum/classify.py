"""Tell opens and clicks made by a person from those made by machines.

An open pixel fetched, or a tracked link followed, proves that *something* asked for
it. Much of that traffic is not a person reading: mailbox providers fetch images
through proxies, Apple Mail prefetches them, and security gateways follow every link
to scan it, often seconds after delivery. An addendum must not present such an event
as "the recipient read it" (README, "Opens, clicks and late bounces"). :func:`classify` says which events
look automatic and why, in a sentence that can go into the addendum as it is.

"Automatic" means "not evidence of a person": a proxy that fetches an image *because*
someone opened the mail (Gmail, Yahoo) still hides who, where and on what device, so
those opens are reported as proxy fetches too.

Rules, first match wins (sources in brackets):

1. No user agent: browsers and mail apps always send one (RFC 9110 10.1.5 "SHOULD").
2. Mailbox providers' image proxies: ``GoogleImageProxy`` / ``ggpht.com`` (Gmail's
   image proxy since December 2013, UA ``Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko
   Firefox/11.0 (via ggpht.com GoogleImageProxy)``), ``YahooMailProxy`` (Yahoo's
   documented proxy, help.yahoo.com SLN28749).
3. Google's network: an event from the address ranges Google publishes for its mail and
   proxy servers (:data:`GOOGLE_NETWORKS`, below) was made by a Google server, not by the
   recipient's device: Gmail's image proxy (reverse DNS ``google-proxy-*.google.com``,
   commonly seen from 66.249.80.0/20 and 66.102.0.0/20) fetches the pixel whatever user
   agent it shows, and Google's scanners follow links from the same ranges. The reason
   names the range. Google's customer cloud (GCP) and Googlebot's crawl ranges are not in the list:
   anyone can rent the former, and Googlebot says so in its user agent.
4. Microsoft Office link checks: ``Microsoft Office Existence Discovery`` (a HEAD that
   Office sends before opening a URL, described by Microsoft in "Description of the
   Microsoft Office Existence Discovery Protocol", 2008), and, for clicks only,
   ``ms-office``/``MSOffice``/``Microsoft Office`` user agents: Office apps probe a
   link before handing it to the browser, whose own request follows. For *opens*,
   Outlook's own image download (``Microsoft Office/16.0 (...Microsoft Outlook...)``
   or ``ms-office``) happens only when a message is displayed with images allowed, so
   it is not on its own a sign of automation.
5. Security gateways and link checkers by user agent: Barracuda, Mimecast, Proofpoint,
   Microsoft Safe Links, Symantec/Broadcom, Trend Micro, Sophos, Forcepoint,
   Cisco/IronPort, FireEye; HTTP libraries and tools (python-requests, urllib,
   aiohttp, httpx, curl, Wget, Go-http-client, Java, Apache-HttpClient, libwww-perl,
   node-fetch, axios; not okhttp, which Android mail apps use); headless browsers
   (HeadlessChrome, PhantomJS, Puppeteer, Playwright); chat link previews
   (facebookexternalhit, WhatsApp, Slack, Discord, Telegram, Skype); and any
   ``bot``/``crawler``/``spider``/``scanner``/``preview`` word (not the CUBOT phone brand).
6. Apple Mail Privacy Protection: Apple Mail with MPP fetches remote content in the
   background through Apple's relays, with the bare user agent ``Mozilla/5.0`` and no
   further tokens (observed by SocketLabs, Word to the Wise and Mailchimp). No browser
   sends that user agent alone, so it is automatic from any address; the reason names
   Apple when the address is in Apple's own networks: 17.0.0.0/8 (ARIN, Apple's since
   1990), 2620:149::/32 (ARIN) and 2a01:b740::/32 (RIPE NCC). MPP also egresses
   through iCloud Private Relay partners' addresses, which are too many to list; the
   user agent is what decides. Apple's range is not a signal on its own (unlike
   Google's): 17.0.0.0/8 also holds Apple's offices, where people read their mail with
   an ordinary browser or mail app.
7. A ``HEAD`` request: link checkers ask whether a page exists; a browser following a
   link or showing an image uses ``GET``.
8. Faster than a person: an event within ``fast_seconds`` (10 s) of delivery.
9. Every link at once: ``clicks_in_last_seconds >= links_in_message >= 2`` (a scanner
   following all the links of a message within seconds).

Otherwise the event is "likely by a person", with what was checked.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["APPLE_NETWORKS", "FAST_SECONDS", "GOOGLE_NETWORKS", "Classification", "classify"]

FAST_SECONDS = 10.0

APPLE_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("17.0.0.0/8", "2620:149::/32", "2a01:b740::/32")
)

# Google's own mail and proxy servers, from the SPF record Google tells mail admins to read
# for its servers' addresses ("Google IP address ranges for outbound mail servers",
# support.google.com/a/answer/60764): the TXT records of _netblocks.google.com (IPv4) and
# _netblocks2.google.com (IPv6); re-check with `dig TXT _netblocks.google.com` when
# updating. Left out: 35.190.247.0/24 and the _netblocks3 ranges in 35.191.0.0/16 and
# 130.211.0.0/22, which are Google Cloud load-balancer space rather than Google's own
# servers. Not all of Google's addresses (goog.json has those, customer cloud included):
# only where Gmail's image proxy and mail servers are.
GOOGLE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "64.233.160.0/19",
        "66.102.0.0/20",
        "66.249.80.0/20",
        "72.14.192.0/18",
        "74.125.0.0/16",
        "108.177.8.0/21",
        "173.194.0.0/16",
        "209.85.128.0/17",
        "216.58.192.0/19",
        "216.239.32.0/19",
        "2001:4860:4000::/36",
        "2404:6800:4000::/36",
        "2607:f8b0:4000::/36",
        "2800:3f0:4000::/36",
        "2a00:1450:4000::/36",
        "2c0f:fb50:4000::/36",
    )
)


@dataclass(frozen=True)
class Classification:
    """Whether an event looks automatic, and why, in plain English."""

    automatic: bool
    reason: str


# (pattern, reason); patterns are searched case-insensitively in the user agent.
_PROXIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), r)
    for p, r in (
        (
            r"GoogleImageProxy|ggpht\.com",
            "fetched by Google's Gmail image proxy (GoogleImageProxy user agent), which "
            "hides who opened the message and from where",
        ),
        (
            r"YahooMailProxy",
            "fetched by Yahoo Mail's proxy (YahooMailProxy user agent), which hides who "
            "opened the message and from where",
        ),
        (
            r"Microsoft Office Existence Discovery",
            "a Microsoft Office existence check (HEAD probe sent before opening a URL)",
        ),
    )
)

_OFFICE_CLICK = re.compile(r"ms-office|MSOffice|Microsoft Office", re.IGNORECASE)

_SCANNERS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE), r)
    for p, r in (
        (r"barracuda", "a Barracuda security scanner"),
        (r"mimecast", "a Mimecast security scanner"),
        (r"proofpoint", "a Proofpoint URL Defense scanner"),
        (r"safe\s*links", "Microsoft Safe Links (Defender for Office 365) scanning links"),
        (r"symantec|broadcom|messagelabs", "a Symantec/Broadcom security scanner"),
        (r"trend\s*micro", "a Trend Micro security scanner"),
        (r"sophos", "a Sophos security scanner"),
        (r"forcepoint|websense", "a Forcepoint security scanner"),
        (r"ironport|cisco", "a Cisco security scanner"),
        (r"fireeye|trellix", "a FireEye/Trellix security scanner"),
        (r"python-requests|python-urllib|aiohttp|httpx|python/", "a Python HTTP library"),
        (r"\bcurl/|libcurl", "the curl command-line tool"),
        (r"\bwget", "the Wget command-line tool"),
        (r"go-http-client", "a Go HTTP library"),
        (r"^java/|apache-httpclient|jakarta", "a Java HTTP library"),
        (r"libwww-perl|lwp::", "a Perl HTTP library"),
        (r"node-fetch|axios|undici", "a Node.js HTTP library"),
        (r"headlesschrome|phantomjs|puppeteer|playwright|selenium", "a headless browser"),
        (
            r"facebookexternalhit|whatsapp|slack|discord|telegram|skypeuripreview",
            "a chat application's link preview",
        ),
        # "bot" as a word ending (Googlebot, bingbot) but not the CUBOT phone brand.
        (
            r"(?<!cu)bot\b|crawler|spider|scanner|preview",
            "a robot (bot, crawler, scanner or preview)",
        ),
    )
)

_BARE_MOZILLA = re.compile(r"Mozilla/5\.0")


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _network_of(ip: str, networks: tuple[_Network, ...]) -> _Network | None:
    """The network of ``networks`` holding ``ip`` (IPv4-mapped IPv6 read as IPv4), or None."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return next((n for n in networks if address.version == n.version and address in n), None)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} seconds"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 86400:.0f} days"


def classify(
    kind: str,
    user_agent: str,
    ip: str,
    seconds_since_delivery: float | None,
    clicks_in_last_seconds: int = 0,
    links_in_message: int = 0,
    *,
    method: str = "GET",
    fast_seconds: float = FAST_SECONDS,
) -> Classification:
    """Classify one open (``kind="open"``) or click (``kind="click"``); see the module docstring.

    ``seconds_since_delivery`` is the time since the recipient's server accepted the
    message (None if unknown); ``clicks_in_last_seconds`` counts the distinct links of
    this copy clicked in the last few seconds, this one included.
    """
    event = "click" if kind == "click" else "open"
    ua = (user_agent or "").strip()
    if not ua:
        return Classification(
            True, f"{event} with no user agent, which browsers and mail apps always send"
        )
    for pattern, reason in _PROXIES:
        if pattern.search(ua):
            return Classification(True, reason)
    google = _network_of(ip, GOOGLE_NETWORKS)
    if google is not None:
        if event == "open":
            why = "where Gmail's image proxy runs; it hides who opened the message and from where"
        else:
            why = "where Google's link scanners and proxies run; a person's click comes from their own network"  # fmt: skip
        return Classification(
            True,
            f"{event} made by a Google server, not the recipient's device: the address is in "
            f"{google}, one of Google's published mail and proxy ranges, {why}",
        )
    if event == "click" and _OFFICE_CLICK.search(ua):
        return Classification(
            True,
            "a Microsoft Office link check (ms-office user agent): Office probes a link "
            "before handing it to the browser",
        )
    for pattern, reason in _SCANNERS:
        if pattern.search(ua):
            return Classification(True, f"{reason} ({_ua_shown(ua)} user agent)")
    if _BARE_MOZILLA.fullmatch(ua):
        apple = _network_of(ip, APPLE_NETWORKS)
        if apple is not None:
            return Classification(
                True,
                f"Apple Mail Privacy Protection (bare 'Mozilla/5.0' user agent from Apple's "
                f"network {apple}), which fetches content whether or not the message is read",
            )
        return Classification(
            True,
            "a bare 'Mozilla/5.0' user agent, which no browser sends alone (Apple Mail "
            "Privacy Protection through a relay, or a script)",
        )
    if method.upper() == "HEAD":
        return Classification(
            True, f"a HEAD request, as link checkers send; a person's {event} uses GET"
        )
    if seconds_since_delivery is not None and seconds_since_delivery < fast_seconds:
        shown = max(seconds_since_delivery, 0.0)
        return Classification(
            True,
            f"{event} {shown:.1f} seconds after delivery, faster than a person opens mail "
            f"(threshold {fast_seconds:g} s)",
        )
    if event == "click" and links_in_message >= 2 and clicks_in_last_seconds >= links_in_message:
        return Classification(
            True,
            f"all {links_in_message} links of the message clicked within seconds, as a "
            f"link scanner does",
        )
    when = (
        f" {_duration(seconds_since_delivery)} after delivery"
        if seconds_since_delivery is not None
        else ""
    )
    return Classification(
        False,
        f"likely by a person: {event}{when} from an ordinary browser or mail app, with no "
        f"sign of an image proxy, privacy prefetch or security scanner",
    )


def _ua_shown(ua: str) -> str:
    shown = "".join(c if c.isprintable() else " " for c in ua)
    return repr(shown if len(shown) <= 80 else shown[:80] + "\u2026")
