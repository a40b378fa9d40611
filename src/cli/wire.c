/* -v: the (D)TLS records the CLI sees on the wire, named like
 * `openssl s_client -msg` names them. Only record and handshake headers
 * are parsed (never a record's content beyond the alert in the clear),
 * from bytes the peer controls: tests/fuzz/fuzz_wire.c fuzzes it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char *record_version(unsigned v, char *tmp, size_t cap) {
  switch (v) {
  case 0x0300: return "SSL 3.0";
  case 0x0301: return "TLS 1.0";
  case 0x0302: return "TLS 1.1";
  case 0x0303: return "TLS 1.2";
  case 0xfeff: return "DTLS 1.0";
  case 0xfefd: return "DTLS 1.2";
  default: snprintf(tmp, cap, "version 0x%04x", v); return tmp;
  }
}

static const char *content_type(unsigned t) {
  switch (t) {
  case 20: return "ChangeCipherSpec";
  case 21: return "Alert";
  case 22: return "Handshake";
  case 23: return "ApplicationData";
  case 24: return "Heartbeat";
  default: return NULL;
  }
}

static const char *handshake_type(unsigned t) {
  switch (t) {
  case 0: return "HelloRequest";
  case 1: return "ClientHello";
  case 2: return "ServerHello";
  case 3: return "HelloVerifyRequest";
  case 4: return "NewSessionTicket";
  case 11: return "Certificate";
  case 12: return "ServerKeyExchange";
  case 13: return "CertificateRequest";
  case 14: return "ServerHelloDone";
  case 15: return "CertificateVerify";
  case 16: return "ClientKeyExchange";
  case 20: return "Finished";
  default: return NULL;
  }
}

static const char *alert_description(unsigned d) {
  switch (d) {
  case 0: return "close_notify";
  case 10: return "unexpected_message";
  case 20: return "bad_record_mac";
  case 21: return "decryption_failed";
  case 22: return "record_overflow";
  case 40: return "handshake_failure";
  case 42: return "bad_certificate";
  case 47: return "illegal_parameter";
  case 49: return "access_denied";
  case 50: return "decode_error";
  case 51: return "decrypt_error";
  case 70: return "protocol_version";
  case 71: return "insufficient_security";
  case 80: return "internal_error";
  case 86: return "inappropriate_fallback";
  case 90: return "user_canceled";
  case 100: return "no_renegotiation";
  case 110: return "unsupported_extension";
  case 112: return "unrecognized_name";
  case 115: return "unknown_psk_identity";
  default: return NULL;
  }
}

static void wire_line(int sent, const char *version, const char *what,
                      size_t len, const char *detail, const char *peer) {
  cli_trace("%s %s, %s [length %04zx]%s%s peer=%s", sent ? ">>>" : "<<<",
            version, what, len, detail[0] ? ", " : "", detail, peer);
}

/* One whole record: its header and `len` bytes of fragment. */
static void trace_record(cli_wire *w, int sent, const char *peer,
                         const uint8_t *rec, size_t hdr, size_t len) {
  char vtmp[32], detail[96], ttmp[32];
  const char *version =
      record_version((unsigned)rec[1] << 8 | rec[2], vtmp, sizeof(vtmp));
  const char *type = content_type(rec[0]);
  const uint8_t *f = rec + hdr;
  /* DTLS: an epoch above 0 is encrypted; TLS: what follows a
   * ChangeCipherSpec in the same direction. */
  int encrypted = w->dtls ? (rec[3] | rec[4]) != 0 : w->encrypted;
  if (type == NULL) {
    snprintf(ttmp, sizeof(ttmp), "content type %u", rec[0]);
    wire_line(sent, version, ttmp, len, "", peer);
    return;
  }
  if (rec[0] == 20) {
    wire_line(sent, version, type, len, "", peer);
    w->encrypted = 1;
    return;
  }
  if (rec[0] == 21) {
    const char *d = len == 2 && !encrypted ? alert_description(f[1]) : NULL;
    if (encrypted || len != 2)
      snprintf(detail, sizeof(detail), "encrypted");
    else if (d != NULL)
      snprintf(detail, sizeof(detail), "%s %s",
               f[0] == 1   ? "warning"
               : f[0] == 2 ? "fatal"
                           : "level?",
               d);
    else
      snprintf(detail, sizeof(detail), "%s description %u",
               f[0] == 1   ? "warning"
               : f[0] == 2 ? "fatal"
                           : "level?",
               f[1]);
    wire_line(sent, version, type, len, detail, peer);
    return;
  }
  if (rec[0] != 22) {
    wire_line(sent, version, type, len, "", peer);
    return;
  }
  if (encrypted) {
    /* In a TLS 1.2 PSK handshake the one encrypted handshake message is
     * Finished (DTLS may send it again: each is named). */
    wire_line(sent, version, type, len,
              w->dtls || !w->finished ? "Finished" : "encrypted", peer);
    w->finished = 1;
    return;
  }
  /* Plaintext: one line per handshake message in the record. */
  size_t mh = w->dtls ? 12 : 4;
  for (size_t at = 0; at < len;) {
    if (len - at < mh) {
      wire_line(sent, version, type, len - at, "a message header cut short",
                peer);
      return;
    }
    const uint8_t *m = f + at;
    size_t body = (size_t)m[1] << 16 | (size_t)m[2] << 8 | m[3];
    size_t frag = body;
    const char *name = handshake_type(m[0]);
    if (name == NULL) {
      snprintf(ttmp, sizeof(ttmp), "handshake type %u", m[0]);
      name = ttmp;
    }
    detail[0] = '\0';
    if (w->dtls) {
      size_t off = (size_t)m[6] << 16 | (size_t)m[7] << 8 | m[8];
      frag = (size_t)m[9] << 16 | (size_t)m[10] << 8 | m[11];
      if (off != 0 || frag != body)
        snprintf(detail, sizeof(detail), "%s (fragment at %zu of %zu)", name,
                 off, body);
    }
    if (frag > len - at - mh) {
      snprintf(detail, sizeof(detail), "%s (continued in the next record)",
               name);
      frag = len - at - mh;
    }
    wire_line(sent, version, type, mh + frag, detail[0] ? detail : name, peer);
    at += mh + frag;
  }
}

void cli_trace_wire(cli_wire *w, int sent, const char *peer,
                    const uint8_t *data, size_t len) {
  if (!cli_verbose || len == 0)
    return;
  if (w->garbage) {
    cli_trace("%s %zu more bytes peer=%s", sent ? ">>>" : "<<<", len, peer);
    return;
  }
  size_t hdr = w->dtls ? 13 : 5;
  if (w->dtls) {
    /* One datagram: whole records. */
    for (size_t at = 0; at < len;) {
      const uint8_t *rec = data + at;
      size_t n = len - at >= hdr ? (size_t)rec[hdr - 2] << 8 | rec[hdr - 1] : 0;
      if (len - at < hdr || rec[1] != 0xfe || n > len - at - hdr) {
        cli_trace("%s %zu bytes that are not a DTLS record peer=%s",
                  sent ? ">>>" : "<<<", len - at, peer);
        return;
      }
      trace_record(w, sent, peer, rec, hdr, n);
      at += hdr + n;
    }
    return;
  }
  /* A stream: records may span reads, and a read may end mid-header. */
  if (w->len + len > CLI_WIRE_MAX) {
    cli_trace("%s %zu bytes that are not TLS records peer=%s",
              sent ? ">>>" : "<<<", w->len + len, peer);
    w->garbage = 1;
    return;
  }
  if (w->buf == NULL && (w->buf = malloc(CLI_WIRE_MAX)) == NULL)
    return;
  memcpy(w->buf + w->len, data, len);
  w->len += len;
  size_t at = 0;
  while (w->len - at >= hdr) {
    const uint8_t *rec = w->buf + at;
    size_t n = (size_t)rec[3] << 8 | rec[4];
    if (content_type(rec[0]) == NULL || rec[1] != 3 || n > 18432) {
      cli_trace("%s %zu bytes that are not a TLS record peer=%s",
                sent ? ">>>" : "<<<", w->len - at, peer);
      w->garbage = 1;
      w->len = 0;
      return;
    }
    if (w->len - at < hdr + n)
      break;
    trace_record(w, sent, peer, rec, hdr, n);
    at += hdr + n;
  }
  memmove(w->buf, w->buf + at, w->len - at);
  w->len -= at;
}

void cli_wire_free(cli_wire *w) {
  free(w->buf);
  w->buf = NULL;
  w->len = 0;
}
