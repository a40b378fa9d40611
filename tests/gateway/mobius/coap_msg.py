"""A small CoAP (RFC 7252) message encoder and decoder for the Mobius test.

Debian bookworm has no python3-aiocoap, so the test carries this: enough
for the oneM2M CoAP binding (TS-0008) requests it sends and the responses
it reads. Options are (number, bytes) pairs; repeated numbers (Uri-Path)
are kept in order. Python 3 standard library only.
"""

import struct

CON, NON, ACK, RST = 0, 1, 2, 3
GET, POST, PUT, DELETE = 1, 2, 3, 4

URI_PATH = 11
CONTENT_FORMAT = 12
URI_QUERY = 15
ACCEPT = 17
# oneM2M options (TS-0008 §6.2.2.4)
OM2M_FR = 256   # From (originator)
OM2M_RQI = 257  # Request Identifier
OM2M_RSC = 265  # Response Status Code
OM2M_TY = 267   # resource type

JSON = 50  # application/json, what Mobius's CoAP proxy knows


def code(cls, detail):
    return (cls << 5) | detail


def code_str(c):
    return "%d.%02d" % (c >> 5, c & 0x1F)


def uint(value):
    """CoAP's uint option format: the shortest big-endian bytes."""
    if value == 0:
        return b""
    n = (value.bit_length() + 7) // 8
    return value.to_bytes(n, "big")


def _ext(v):
    if v < 13:
        return v, b""
    if v < 269:
        return 13, bytes([v - 13])
    return 14, struct.pack("!H", v - 269)


def encode(mtype, mcode, mid, token=b"", options=(), payload=b""):
    if len(token) > 8:
        raise ValueError("token longer than 8 bytes")
    out = bytearray([0x40 | (mtype << 4) | len(token), mcode])
    out += struct.pack("!H", mid & 0xFFFF)
    out += token
    last = 0
    for num, val in sorted(options, key=lambda o: o[0]):  # stable sort
        d, dext = _ext(num - last)
        l, lext = _ext(len(val))
        out.append((d << 4) | l)
        out += dext + lext + val
        last = num
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def decode(data):
    """Returns a dict: type, code, mid, token, options [(num, bytes)],
    payload. Raises ValueError on a malformed message."""
    if len(data) < 4 or data[0] >> 6 != 1:
        raise ValueError("not a CoAP 1 message")
    tkl = data[0] & 0x0F
    if tkl > 8 or len(data) < 4 + tkl:
        raise ValueError("bad token length")
    msg = {"type": (data[0] >> 4) & 3, "code": data[1],
           "mid": struct.unpack("!H", data[2:4])[0],
           "token": bytes(data[4:4 + tkl]), "options": [], "payload": b""}
    i, num = 4 + tkl, 0
    while i < len(data):
        if data[i] == 0xFF:
            msg["payload"] = bytes(data[i + 1:])
            if not msg["payload"]:
                raise ValueError("payload marker without payload")
            break
        d, l = data[i] >> 4, data[i] & 0x0F
        i += 1
        vals = []
        for v in (d, l):
            if v == 13:
                vals.append(data[i] + 13)
                i += 1
            elif v == 14:
                vals.append(struct.unpack("!H", data[i:i + 2])[0] + 269)
                i += 2
            elif v == 15:
                raise ValueError("reserved option nibble")
            else:
                vals.append(v)
        num += vals[0]
        if i + vals[1] > len(data):
            raise ValueError("option runs past the message")
        msg["options"].append((num, bytes(data[i:i + vals[1]])))
        i += vals[1]
    return msg


def option(msg, num):
    """The first value of option `num`, or None."""
    for n, v in msg["options"]:
        if n == num:
            return v
    return None


def option_uint(msg, num):
    v = option(msg, num)
    return None if v is None else int.from_bytes(v, "big")


def request(method, path, origin, rqi, mid, token, ty=None, payload=b"",
            query=()):
    """A confirmable oneM2M request: `path` like "/Mobius/ae1" becomes
    Uri-Path options; JSON content and Accept."""
    opts = [(URI_PATH, seg.encode()) for seg in path.strip("/").split("/")
            if seg]
    opts += [(URI_QUERY, q.encode()) for q in query]
    opts += [(ACCEPT, uint(JSON)), (OM2M_FR, origin.encode()),
             (OM2M_RQI, rqi.encode())]
    if payload:
        opts.append((CONTENT_FORMAT, uint(JSON)))
    if ty is not None:
        opts.append((OM2M_TY, uint(ty)))
    return encode(CON, method, mid, token, opts, payload)
