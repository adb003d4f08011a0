"""WAP Push Service Indication: a WSP push PDU carrying a WBXML `<si>` (WAP-167, WAP-230)."""

from __future__ import annotations

WAP_PUSH_PORT = 2948  # WAP-259 WDP: the connectionless WAP Push port (UDH destination port)
WSP_SOURCE_PORT = 9200  # WAP-259 WDP: connectionless WSP, the push originator's port

WSP_TRANSACTION_ID = 0x01
WSP_PDU_PUSH = 0x06  # WAP-230 WSP §8.2.1, PDU type "Push"
# WAP-230 WSP §8.4.2.24 Content-Type, general form: value-length 3, well-known media 0x2E
# (application/vnd.wap.sic) | 0x80, parameter Charset (0x01 | 0x80) = UTF-8 (MIBenum 106 | 0x80).
WSP_CONTENT_TYPE_SIC_UTF8 = bytes((0x03, 0xAE, 0x81, 0xEA))

# WAP-192 WBXML header: version 1.2, public id 0x05 "-//WAPFORUM//DTD SI 1.0//EN", charset
# UTF-8 (106), empty string table.
WBXML_SI_HEADER = bytes((0x02, 0x05, 0x6A, 0x00))
WBXML_END = 0x01  # WAP-192 §5.8.4.1 global token END
WBXML_STR_I = 0x03  # WAP-192 §5.8.4.1 inline string, NUL-terminated
TAG_SI_CONTENT = 0x45  # WAP-167 §8.3.1 <si> (0x05) with content (0x40)
TAG_INDICATION_ATTRS_CONTENT = 0xC6  # <indication> (0x06) with attributes (0x80) and content
TAG_INDICATION_ATTRS = 0x86  # <indication> with attributes, empty
# WAP-167 §8.3.2 attribute start tokens for href, longest prefix first.
HREF_STARTS: tuple[tuple[str, int], ...] = (
    ("https://www.", 0x0F),
    ("https://", 0x0E),
    ("http://www.", 0x0D),
    ("http://", 0x0C),
)
ATTR_HREF = 0x0B  # href with the whole URL as its value


def uintvar(value: int) -> bytes:
    """WAP-230 WSP §8.1.2 variable-length unsigned integer: 7 bits per octet, MSB = continue."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _inline(text: str) -> bytes:
    # A NUL would end the inline string early (WAP-192 §5.8.4.1): it cannot be carried.
    return bytes((WBXML_STR_I,)) + text.replace("\x00", "").encode("utf-8") + b"\x00"


def service_indication(url: str, title: str) -> bytes:
    """The WBXML SI document `<si><indication href=url>title</indication></si>` (WAP-167).

    A URL without a scheme gets `http://`.
    """
    if "://" not in url:
        url = "http://" + url
    attrs = bytearray()
    for start, token in HREF_STARTS:
        if url.startswith(start):
            attrs.append(token)
            attrs += _inline(url[len(start) :]) if len(url) > len(start) else b""
            break
    else:
        attrs.append(ATTR_HREF)
        attrs += _inline(url)
    attrs.append(WBXML_END)
    doc = bytearray(WBXML_SI_HEADER)
    doc.append(TAG_SI_CONTENT)
    if title:
        doc.append(TAG_INDICATION_ATTRS_CONTENT)
        doc += attrs + _inline(title) + bytes((WBXML_END,))
    else:
        doc.append(TAG_INDICATION_ATTRS)
        doc += attrs
    doc.append(WBXML_END)  # </si>
    return bytes(doc)


def push_pdu(url: str, title: str) -> bytes:
    """The connectionless WSP Push PDU (WAP-230 §8.2.4.1) carrying the SI for `url`, `title`."""
    headers = WSP_CONTENT_TYPE_SIC_UTF8
    return (
        bytes((WSP_TRANSACTION_ID, WSP_PDU_PUSH))
        + uintvar(len(headers))
        + headers
        + service_indication(url, title)
    )
