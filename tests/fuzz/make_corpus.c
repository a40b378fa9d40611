/* Writes the seed corpus of every fuzz target into OUTDIR/<target>/, or of
 * the TARGETs named only:
 *
 *   make_corpus OUTDIR [TARGET...]
 *
 * fuzz_dtls_listen's and fuzz_renegotiate's seeds need the OpenSSL backend:
 * write them from a build configured with -DM2MPSK_TLS=openssl.
 *
 * The transport seeds are transcripts of real in-memory handshakes between
 * two m2mpsk associations, TLS and DTLS, one per cipher suite and per kind
 * of record (IdA, Credential-ID, unknown, revoked, expired, IdB not
 * served), recorded as the bytes each side drained and written in the
 * targets' chunk format (common.h). BoringSSL's randomness cannot be fixed
 * (Debian's build has no deterministic mode), so every run writes different
 * bytes with the same structure; the committed corpus is one such run. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

static const char *outdir;
static size_t nfiles;
static char **only; /* the targets to write, NULL-terminated; NULL: all */

static int wanted(const char *target) {
  if (only == NULL)
    return 1;
  for (char **t = only; *t != NULL; t++)
    if (strcmp(*t, target) == 0)
      return 1;
  return 0;
}

static void write_seed(const char *target, const char *name, const uint8_t *p,
                       size_t n) {
  char path[512];
  if (!wanted(target))
    return;
  snprintf(path, sizeof(path), "%s/%s", outdir, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(p, 1, n, f) != n || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
  nfiles++;
}

/* ---- transcripts --------------------------------------------------------- */

typedef struct tape {
  const m2mpsk_assoc *from; /* record only what this side drains */
  uint8_t buf[65536];
  size_t len;
  int pieces;
  size_t split; /* TLS: cut each piece into chunks of this size (0: whole) */
  int flags;    /* chunk flags for every chunk after the first */
} tape;

static void record(void *ctx, const m2mpsk_assoc *from, const uint8_t *p,
                   size_t n) {
  tape *t = ctx;
  if (from != t->from)
    return;
  size_t step = t->split ? t->split : n;
  for (size_t off = 0; off < n; off += step) {
    size_t len = n - off < step ? n - off : step;
    size_t at = fz_put_chunk(t->buf, sizeof(t->buf), t->len, p + off, len,
                             t->pieces > 0 ? t->flags : 0);
    fz_check(at != 0, "tape full");
    t->len = at;
    t->pieces++;
  }
}

static m2mpsk_keystore *generator_ks(void) {
  static m2mpsk_keystore *ks;
  if (ks == NULL) {
    const char *ids[] = {FZ_KPSA_ID,     FZ_KPSA_NOIDA, FZ_KPSA_REVOKED,
                         FZ_KPSA_WINDOW, FZ_KPSA_OTHER, FZ_KPSA_UNKNOWN};
    fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
      const char *idb = strcmp(ids[i], FZ_KPSA_NOIDA) == 0   ? FZ_IDB_REL
                        : strcmp(ids[i], FZ_KPSA_OTHER) == 0 ? FZ_IDB_OTHER
                                                             : FZ_IDB;
      int window = strcmp(ids[i], FZ_KPSA_WINDOW) == 0;
      fz_check(m2mpsk_keystore_add(ks, ids[i], fz_key, sizeof(fz_key),
                                   strcmp(ids[i], FZ_KPSA_NOIDA) == 0 ? NULL
                                                                      : FZ_IDA,
                                   idb, window ? FZ_WINDOW_NB : 0,
                                   window ? FZ_WINDOW_NA : 0) == M2MPSK_OK,
               "keystore_add");
    }
  }
  return ks;
}

typedef struct hs_opts {
  m2mpsk_transport t;
  const char *kpsa_id;
  m2mpsk_config *cfg_a, *cfg_b;
  m2mpsk_keystore *ks_a, *ks_b;
  int64_t unix_time;
  unsigned mtu;
  int record_initiator; /* else the responder */
  size_t split;
  int flags;
  int resend_first; /* DTLS: the first datagram again, after a timer */
} hs_opts;

/* Runs one handshake and returns the tape of one side's output. */
static void transcript(const hs_opts *o, tape *t) {
  m2mpsk_assoc *a = NULL, *b = NULL;
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, o->t, o->cfg_a, o->ks_a,
                            o->kpsa_id) == M2MPSK_OK,
           "assoc_new");
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, o->t, o->cfg_b, o->ks_b,
                            NULL) == M2MPSK_OK,
           "assoc_new");
  if (o->mtu) {
    fz_check(m2mpsk_assoc_set_mtu(a, o->mtu) == M2MPSK_OK, "set_mtu");
    fz_check(m2mpsk_assoc_set_mtu(b, o->mtu) == M2MPSK_OK, "set_mtu");
  }
  memset(t, 0, sizeof(*t));
  t->from = o->record_initiator ? a : b;
  t->split = o->split;
  t->flags = o->flags;
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, o->unix_time) == M2MPSK_OK, "start");
  fz_status(m2mpsk_assoc_start(a, now, o->unix_time), 0, "assoc_start");
  (void)fz_handshake(a, b, &now, record, t);
  if (o->resend_first && t->len > 0) {
    /* Append the first chunk once more, flagged to fire the timer first:
     * what a retransmitting peer sends. */
    size_t first = (((size_t)t->buf[0] & 0x3f) << 8) | t->buf[1];
    size_t at =
        fz_put_chunk(t->buf, sizeof(t->buf), t->len, t->buf + 2, first, 0x80);
    fz_check(at != 0, "tape full");
    t->len = at;
  }
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
}

static void emit(const char *target, const char *name, uint8_t opts,
                 const tape *t) {
  static uint8_t out[65537];
  out[0] = opts;
  memcpy(out + 1, t->buf, t->len);
  write_seed(target, name, out, t->len + 1);
}

static const char *short_suite(size_t i) {
  static const char *names[] = {"psk-aes128-cbc", "psk-aes256-cbc",
                                "ecdhe-psk-aes128-cbc", "ecdhe-psk-aes256-cbc",
                                "ecdhe-psk-chacha20"};
  return i < 5 ? names[i] : "suite";
}

static void responder_seeds(m2mpsk_transport tr) {
  const char *target = tr == M2MPSK_TRANSPORT_DTLS ? "fuzz_responder_dtls"
                                                   : "fuzz_responder_tls";
  static tape t;
  char name[128];
  hs_opts o = {.t = tr,
               .kpsa_id = FZ_KPSA_ID,
               .ks_a = generator_ks(),
               .ks_b = fz_responder_ks(),
               .cfg_b = fz_responder_cfg(0),
               .unix_time = FZ_UNIX_TIME,
               .record_initiator = 1};
  for (size_t s = 0; s < m2mpsk_suite_count(); s++) {
    o.cfg_a = fz_cfg_with_suite(s, 0);
    transcript(&o, &t);
    snprintf(name, sizeof(name), "%s-ida", short_suite(s));
    emit(target, name, 0, &t);
    m2mpsk_config_free(o.cfg_a);
  }
  o.cfg_a = fz_cfg_with_suite(0, 0);
  struct {
    const char *id, *name;
    uint8_t opts;
  } kinds[] = {{FZ_KPSA_NOIDA, "credential-id", 0},
               {FZ_KPSA_UNKNOWN, "unknown", 0},
               {FZ_KPSA_UNKNOWN, "unknown-revealed", 1},
               {FZ_KPSA_REVOKED, "revoked", 0},
               {FZ_KPSA_WINDOW, "window", 0},
               {FZ_KPSA_WINDOW, "window-no-clock", 2},
               {FZ_KPSA_WINDOW, "window-expired", 4},
               {FZ_KPSA_OTHER, "idb-not-served", 1},
               /* fuzz_responder's key source: asked, answered, resumed */
               {FZ_KPSA_UNKNOWN, "key-source-absent", 16},
               {FZ_KPSA_UNKNOWN, "key-source-supplied", 48}};
  for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
    o.kpsa_id = kinds[k].id;
    o.cfg_b = fz_responder_cfg(kinds[k].opts & 1);
    transcript(&o, &t);
    emit(target, kinds[k].name, kinds[k].opts, &t);
  }
  o.kpsa_id = FZ_KPSA_ID;
  o.cfg_b = fz_responder_cfg(0);
  if (tr == M2MPSK_TRANSPORT_TLS) {
    o.split = 5;
    o.flags = 0x40; /* small drains too */
    transcript(&o, &t);
    emit(target, "split-5-bytes", 0, &t);
  } else {
    o.mtu = M2MPSK_MTU_MIN;
    transcript(&o, &t);
    emit(target, "mtu-256", 8, &t);
    o.mtu = 0;
    o.resend_first = 1;
    transcript(&o, &t);
    emit(target, "retransmit", 0, &t);
  }
  m2mpsk_config_free(o.cfg_a);
}

static void initiator_seeds(void) {
  static tape t;
  char name[128];
  for (int d = 0; d < 2; d++) {
    m2mpsk_transport tr = d ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS;
    const char *tn = d ? "dtls" : "tls";
    hs_opts o = {.t = tr,
                 .kpsa_id = FZ_KPSA_ID,
                 .ks_a = fz_initiator_ks(),
                 .ks_b = fz_responder_ks(),
                 .cfg_a = fz_initiator_cfg(),
                 .unix_time = FZ_UNIX_TIME,
                 .record_initiator = 0};
    for (size_t s = 0; s < m2mpsk_suite_count(); s++) {
      o.cfg_b = fz_cfg_with_suite(s, 1);
      transcript(&o, &t);
      snprintf(name, sizeof(name), "%s-%s", tn, short_suite(s));
      emit("fuzz_initiator", name, (uint8_t)d, &t);
      m2mpsk_config_free(o.cfg_b);
    }
    o.cfg_b = fz_responder_cfg(0);
    o.kpsa_id = FZ_KPSA_NOIDA;
    transcript(&o, &t);
    snprintf(name, sizeof(name), "%s-credential-id", tn);
    emit("fuzz_initiator", name, (uint8_t)(d | 2), &t);
    o.kpsa_id = FZ_KPSA_WINDOW;
    transcript(&o, &t);
    snprintf(name, sizeof(name), "%s-window", tn);
    emit("fuzz_initiator", name, (uint8_t)(d | 4), &t);
    o.kpsa_id = FZ_KPSA_ID;
    if (d) {
      o.mtu = M2MPSK_MTU_MIN;
      transcript(&o, &t);
      emit("fuzz_initiator", "dtls-mtu-256", (uint8_t)(d | 16), &t);
      o.mtu = 0;
      o.resend_first = 1;
      transcript(&o, &t);
      emit("fuzz_initiator", "dtls-retransmit", (uint8_t)d, &t);
    } else {
      o.split = 7;
      transcript(&o, &t);
      emit("fuzz_initiator", "tls-split-7-bytes", 0, &t);
    }
  }
}

/* ---- application data ---------------------------------------------------- */

/* One application-data record from a real session: raw bytes for op 1. */
static size_t app_record(m2mpsk_transport tr, uint8_t *out, size_t cap) {
  m2mpsk_assoc *a = NULL, *b = NULL;
  m2mpsk_config *ca = fz_cfg_with_suite(0, 0), *cb = fz_cfg_with_suite(0, 1);
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, tr, ca,
                            fz_initiator_ks(), FZ_KPSA_ID) == M2MPSK_OK,
           "assoc_new");
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, tr, cb,
                            fz_responder_ks(), NULL) == M2MPSK_OK,
           "assoc_new");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(b, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(m2mpsk_assoc_start(a, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(fz_handshake(a, b, &now, NULL, NULL), "handshake");
  size_t w, n = 0;
  fz_check(m2mpsk_assoc_write(a, (const uint8_t *)"hello", 5, &w) == M2MPSK_OK,
           "write");
  fz_check(m2mpsk_assoc_drain(a, out, cap, &n) == M2MPSK_OK, "drain");
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);
  m2mpsk_config_free(ca);
  m2mpsk_config_free(cb);
  return n;
}

static void appdata_seeds(void) {
  static const uint8_t hello[] = {0, 5, 'h', 'e', 'l', 'l', 'o', 3, 255};
  static const uint8_t talk[] = {0,   5,   'h', 'e', 'l', 'l', 'o',
                                 3,   255, 4,   5,   'w', 'o', 'r',
                                 'l', 'd', 3,   0,   6,   3,   255};
  static const uint8_t corrupt[] = {2,   0,   11,  0x55, 5, 'h',
                                    'e', 'l', 'l', 'o',  3, 255};
  static const uint8_t truncated[] = {2,   1,   9, 0, 5,   'h', 'e', 'l',
                                      'l', 'o', 0, 2, 'o', 'k', 3,   255};
  static const uint8_t replay[] = {2, 2, 0, 0, 4, 'p', 'i', 'n', 'g', 3, 255};
  static const uint8_t reorder[] = {2, 3, 0, 0,   1, 'a', 2, 3,
                                    0, 0, 1, 'b', 3, 255, 3, 255};
  static const uint8_t close_me[] = {0, 2, 'h', 'i', 5, 3, 255, 4, 1, 'x'};
  static const uint8_t revoke[] = {0, 2, 'h', 'i', 8, 3, 255, 4, 1, 'x'};
  static const uint8_t expire[] = {0, 2, 'h', 'i', 7, 200, 3, 255, 4, 1, 'x'};
  static const uint8_t big[] = {4, 255, 'A', 3, 255};
  static const uint8_t peer_alert[] = {0, 2, 'h', 'i', 9, 0, 3, 255};
  static const uint8_t peer_closed[] = {0, 2,   'h', 'i', 9,  1,
                                        3, 255, 4,   1,   'x'};
  static const uint8_t renegotiate[] = {0, 2, 'h', 'i', 10, 3, 255, 4, 1, 'x'};
  static const struct {
    const char *name;
    const uint8_t *ops;
    size_t len;
    uint8_t opts_or; /* opts bits 5, 6 */
  } seqs[] = {
      {"hello", hello, sizeof(hello), 0},
      {"talk-close", talk, sizeof(talk), 0},
      {"corrupt", corrupt, sizeof(corrupt), 0},
      {"truncated", truncated, sizeof(truncated), 0},
      {"replay", replay, sizeof(replay), 0},
      {"reorder", reorder, sizeof(reorder), 0},
      {"close", close_me, sizeof(close_me), 32},
      {"revoke", revoke, sizeof(revoke), 0},
      {"expire", expire, sizeof(expire), 64},
      {"short-write", big, sizeof(big), 0},
      {"peer-alert", peer_alert, sizeof(peer_alert), 0},
      {"peer-fails-closed", peer_closed, sizeof(peer_closed), 0},
      {"renegotiate-in-clear", renegotiate, sizeof(renegotiate), 0},
  };
  uint8_t out[1024];
  char name[128];
  size_t k = 0;
  for (int d = 0; d < 2; d++) {
    for (int resp = 0; resp < 2; resp++) {
      for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++, k++) {
        /* Every combination would be 52 seeds; each of the first ten
         * sequences runs on two of the four (transport, side) pairs, the
         * alerts and renegotiation attempts on all four, suites in
         * turn. */
        if (i < 10 && (i + (size_t)d + (size_t)resp) % 2 != 0)
          continue;
        size_t suite = k % m2mpsk_suite_count();
        out[0] =
            (uint8_t)(d | (resp << 1) | (int)(suite << 2) | seqs[i].opts_or);
        memcpy(out + 1, seqs[i].ops, seqs[i].len);
        snprintf(name, sizeof(name), "%s-%s-%s", d ? "dtls" : "tls",
                 resp ? "responder" : "initiator", seqs[i].name);
        write_seed("fuzz_appdata", name, out, 1 + seqs[i].len);
      }
    }
    /* A recorded record from another session, fed raw (op 1). */
    uint8_t recbuf[2048];
    size_t n = app_record(d ? M2MPSK_TRANSPORT_DTLS : M2MPSK_TRANSPORT_TLS,
                          recbuf, sizeof(recbuf));
    out[0] = (uint8_t)(d | 2);
    out[1] = 1;
    size_t at = fz_put_chunk(out, sizeof(out), 2, recbuf, n, 0);
    fz_check(at != 0, "raw seed");
    out[at++] = 3;
    out[at++] = 255;
    write_seed("fuzz_appdata",
               d ? "dtls-responder-foreign-record"
                 : "tls-responder-foreign-record",
               out, at);
  }
}

/* ---- the DTLS cookie exchange -------------------------------------------- */

#define LISTEN_TAG "192.0.2.7:5684" /* fuzz_dtls_listen.c's TAG */

/* A real exchange: the initiator's first ClientHello (no cookie), the
 * HelloVerifyRequest m2mpsk_dtls_listen answers, the second ClientHello
 * (with the cookie, valid in this process only), then the handshake with
 * the association made for it, recording everything the initiator sends
 * after the ClientHellos. Only with a backend that has the exchange. */
static void listen_seeds(void) {
  const char *target = "fuzz_dtls_listen";
  m2mpsk_config *cfg = fz_responder_cfg(0);
  uint8_t ch1[2048], ch2[2048], hvr[512];
  size_t ch1_len = 0, ch2_len = 0, hvr_len = 0;
  if (!wanted(target) ||
      m2mpsk_dtls_listen(cfg, LISTEN_TAG, (const uint8_t *)"x", 1, hvr,
                         sizeof(hvr), &hvr_len) == M2MPSK_E_UNSUPPORTED)
    return;
  m2mpsk_assoc *a = NULL, *b = NULL;
  fz_check(m2mpsk_assoc_new(&a, M2MPSK_ROLE_INITIATOR, M2MPSK_TRANSPORT_DTLS,
                            fz_initiator_cfg(), fz_initiator_ks(),
                            FZ_KPSA_ID) == M2MPSK_OK,
           "assoc_new");
  uint64_t now = FZ_T0;
  fz_check(m2mpsk_assoc_start(a, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(m2mpsk_assoc_drain(a, ch1, sizeof(ch1), &ch1_len) == M2MPSK_OK,
           "first ClientHello");
  fz_check(m2mpsk_dtls_listen(cfg, LISTEN_TAG, ch1, ch1_len, hvr, sizeof(hvr),
                              &hvr_len) == M2MPSK_LISTEN_REPLY,
           "HelloVerifyRequest");
  fz_check(m2mpsk_assoc_feed(a, hvr, hvr_len, now) == M2MPSK_OK, "feed HVR");
  fz_check(m2mpsk_assoc_drain(a, ch2, sizeof(ch2), &ch2_len) == M2MPSK_OK,
           "second ClientHello");
  size_t n;
  fz_check(m2mpsk_dtls_listen(cfg, LISTEN_TAG, ch2, ch2_len, hvr, sizeof(hvr),
                              &n) == M2MPSK_OK,
           "cookie accepted");
  fz_check(m2mpsk_assoc_new(&b, M2MPSK_ROLE_RESPONDER, M2MPSK_TRANSPORT_DTLS,
                            cfg, fz_responder_ks(), NULL) == M2MPSK_OK,
           "assoc_new");
  fz_check(m2mpsk_assoc_set_peer_tag(b, LISTEN_TAG) == M2MPSK_OK, "peer tag");
  fz_check(m2mpsk_assoc_start(b, now, FZ_UNIX_TIME) == M2MPSK_OK, "start");
  fz_check(m2mpsk_assoc_feed(b, ch2, ch2_len, now) == M2MPSK_OK, "feed CH");
  static tape rest;
  memset(&rest, 0, sizeof(rest));
  rest.from = a;
  fz_check(fz_handshake(a, b, &now, record, &rest), "handshake");
  m2mpsk_assoc_free(a);
  m2mpsk_assoc_free(b);

  /* Seeds: opts byte, then the chosen datagrams as chunks. */
  static uint8_t out[65536 + 4096];
  struct {
    const char *name;
    uint8_t opts;
    int first;  /* 1: ch1, 2: ch2, 3: ch1 then ch2, 4: ch1 cut short */
    int append; /* the rest of the handshake */
  } seeds[] = {
      {"no-cookie", 0, 1, 0},
      {"stale-cookie", 0, 2, 0},
      {"no-cookie-then-stale", 0, 3, 1},
      {"answered-no-cookie", 1, 1, 1},
      {"answered-stale-cookie", 1, 2, 1},
      {"answered-other-tag", 3, 2, 1},
      {"answered-reveal", 9, 2, 1},
      {"small-buffer", 4, 1, 0},
      {"truncated", 1, 4, 0},
  };
  for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
    size_t at = 1;
    out[0] = seeds[i].opts;
    if (seeds[i].first & 1)
      at = fz_put_chunk(out, sizeof(out), at, ch1, ch1_len, 0);
    if (seeds[i].first & 2)
      at = fz_put_chunk(out, sizeof(out), at, ch2, ch2_len, 0);
    if (seeds[i].first == 4)
      at = fz_put_chunk(out, sizeof(out), at, ch1, 40, 0);
    fz_check(at != 0, "listen seed");
    if (seeds[i].append) {
      fz_check(at + rest.len <= sizeof(out), "listen seed");
      memcpy(out + at, rest.buf, rest.len);
      at += rest.len;
    }
    write_seed(target, seeds[i].name, out, at);
  }
  /* Not a ClientHello: the initiator's next flight alone. */
  out[0] = 0;
  memcpy(out + 1, rest.buf, rest.len);
  write_seed(target, "not-a-client-hello", out, 1 + rest.len);
}

/* ---- renegotiation by a raw OpenSSL peer ----------------------------------
 */

/* Operation sequences for fuzz_renegotiate (its header), over each
 * transport and side; only OpenSSL builds have the target. */
static void renegotiate_seeds(void) {
  static const uint8_t full[] = {0,   2,   'h', 'i', 1,   0, 0,  2,
                                 'o', 'k', 4,   1,   'x', 3, 255};
  static const uint8_t abbreviated[] = {1, 1, 0, 2, 'o', 'k', 3, 255};
  static const uint8_t talk[] = {0,   5,   'h', 'e', 'l', 'l', 'o', 4, 5,  'w',
                                 'o', 'r', 'l', 'd', 3,   255, 5,   3, 255};
  static const uint8_t close_me[] = {4, 2, 'h', 'i', 6, 3, 255};
  static const struct {
    const char *name;
    const uint8_t *ops;
    size_t len;
  } seqs[] = {{"renegotiate", full, sizeof(full)},
              {"renegotiate-abbreviated", abbreviated, sizeof(abbreviated)},
              {"talk-peer-shutdown", talk, sizeof(talk)},
              {"close", close_me, sizeof(close_me)}};
  if (strcmp(m2mpsk_backend_name(), "openssl") != 0)
    return;
  uint8_t out[64];
  char name[128];
  size_t k = 0;
  for (int d = 0; d < 2; d++) {
    for (int resp = 0; resp < 2; resp++) {
      for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++, k++) {
        size_t suite = k % m2mpsk_suite_count();
        out[0] = (uint8_t)(d | (resp << 1) | (int)(suite << 2));
        memcpy(out + 1, seqs[i].ops, seqs[i].len);
        snprintf(name, sizeof(name), "%s-%s-%s", d ? "dtls" : "tls",
                 resp ? "responder" : "initiator", seqs[i].name);
        write_seed("fuzz_renegotiate", name, out, 1 + seqs[i].len);
      }
    }
  }
}

/* ---- parsers ------------------------------------------------------------- */

static void text_seed(const char *target, const char *name, const char *s) {
  write_seed(target, name, (const uint8_t *)s, strlen(s));
}

static void keyfile_seeds(void) {
  const char *t = "fuzz_keyfile";
  text_seed(t, "minimal",
            "kpsa-id=a@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=//m2m.example.com/cse-in\n");
  text_seed(t, "full",
            "# Entity A records\n"
            "\n"
            "kpsa-id=noida@onem2m.com\t"
            "kpsa=hex:"
            "4b70736101020304050607080910111213141516171819202122232425262728 "
            "idb=//m2m.example.com/cse-in ida=//m2m.example.com/cse-in/Cae1 "
            "not-before=2026-01-01T00:00:00Z not-after=1798761600\n"
            "  # indented comment\n"
            "kpsa-id=b.x_y-z@iot.example.org "
            "kpsa=base64:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8= "
            "idb=/cse-rel ida=/S123\n");
  text_seed(t, "crlf-no-final-newline",
            "kpsa-id=c@onem2m.com kpsa=hex:000102030405060708090a0b0c0d0e0f "
            "idb=/cse-1\r\n"
            "kpsa-id=d@onem2m.com kpsa=base64:AAECAwQFBgcICQoLDA0ODw== "
            "idb=//192.0.2.1/cse-2 ida=//192.0.2.1/cse-2/C9");
  text_seed(t, "duplicate-with-keystore",
            "kpsa-id=" FZ_KPSA_ID
            " kpsa=hex:00112233445566778899aabbccddeeff idb=/cse-1\n");
  text_seed(t, "duplicate-in-file",
            "kpsa-id=e@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-1\n"
            "kpsa-id=e@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-2\n");
  text_seed(t, "bad-hex",
            "kpsa-id=f@onem2m.com kpsa=hex:0011223344556677889Xaabbccddeeff "
            "idb=/cse-1\n");
  text_seed(t, "bad-base64-padding",
            "kpsa-id=f@onem2m.com kpsa=base64:AAECAwQFBgcICQoLDA0ODw= "
            "idb=/cse-1\n");
  text_seed(t, "times",
            "kpsa-id=g@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-1 not-before=1970-01-01T00:00:00Z "
            "not-after=2099-12-31T23:59:59Z\n"
            "kpsa-id=h@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-1 not-before=2000-02-29T12:00:00Z not-after=0\n");
  text_seed(t, "bad-window",
            "kpsa-id=i@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-1 not-before=2030-01-01T00:00:00Z not-after=1000\n");
  text_seed(t, "unknown-field",
            "kpsa-id=j@onem2m.com kpsa=hex:00112233445566778899aabbccddeeff "
            "idb=/cse-1 colour=blue\n");
  text_seed(t, "short-key", "kpsa-id=k@onem2m.com kpsa=hex:0011 idb=/cse-1\n");
}

static void identifier_seeds(void) {
  const char *t = "fuzz_identifiers";
  struct {
    const char *name, *s;
  } ids[] = {
      {"kpsa-id", "test@onem2m.com"},
      {"kpsa-id-rich", "a.b_c-D9@sub-1.example.co.uk"},
      {"kpsa-id-no-at", "test.onem2m.com"},
      {"kpsa-id-two-at", "a@b@onem2m.com"},
      {"kpsa-id-bad-label", "a@-bad-.example.com"},
      {"idb-absolute", "//m2m.example.com/cse-in"},
      {"idb-relative", "/cse-rel"},
      {"idb-upper", "//M2M.Example.COM/cse-1"},
      {"idb-address", "//192.0.2.1/cse-1"},
      {"idb-trailing-slash", "//m2m.example.com/cse-in/"},
      {"ida-ae-c", "//m2m.example.com/cse-in/Cae1"},
      {"ida-ae-s", "/S123"},
      {"ida-relative-ae", "/cse-1/C123"},
      {"ida-bad-ae", "/cse-1/X123"},
      {"empty-segments", "///"},
      {"credential", "12-test@onem2m.com"},
  };
  for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
    text_seed(t, ids[i].name, ids[i].s);
  /* One over each length limit. */
  char s[700];
  memset(s, 'a', sizeof(s));
  memcpy(s + 120, "@onem2m.com", 11);
  write_seed(t, "kpsa-id-too-long", (const uint8_t *)s, 131);
  memcpy(s, "//", 2);
  memcpy(s + 400, "/cse", 4);
  write_seed(t, "id-too-long", (const uint8_t *)s, 600);
}

/* ---- fuzz_httpreq: a device's HTTP requests, as plaintext -------------- */

/* One seed: the options byte, then `text` cut into pieces of `cut` bytes
 * (0: one piece). */
static void httpreq_seed(const char *name, uint8_t opts, const char *text,
                         size_t cut) {
  static uint8_t out[16384];
  size_t len = strlen(text), at = 1;
  out[0] = opts;
  if (cut == 0)
    cut = len;
  for (size_t i = 0; i < len; i += cut) {
    size_t n = len - i < cut ? len - i : cut;
    at = fz_put_chunk(out, sizeof(out), at, (const uint8_t *)text + i, n, 0);
    if (at == 0) {
      fprintf(stderr, "httpreq seed %s: too long\n", name);
      exit(1);
    }
  }
  write_seed("fuzz_httpreq", name, out, at);
}

static void httpreq_seeds(void) {
  /* opts: head bound 65536 (3), body bound 1000 (2 << 2) unless said. */
  const uint8_t o = 3 | 2 << 2;
  httpreq_seed("get", o,
               "GET /cse-in/ae?rcn=1 HTTP/1.1\r\nHost: cse\r\n"
               "X-M2M-Origin: Cae-1\r\nX-M2M-RI: r1\r\n\r\n",
               0);
  httpreq_seed(
      "ae-create", o,
      "POST /cse-in HTTP/1.1\r\nHost: cse\r\nX-M2M-Origin: C\r\n"
      "X-M2M-RI: a1\r\nX-M2M-RVI: 3\r\n"
      "Content-Type: application/json;ty=2\r\nContent-Length: 47\r\n"
      "\r\n{\"m2m:ae\":{\"rn\":\"ae\",\"api\":\"Ntest\",\"rr\":false}}",
      0);
  httpreq_seed("bytewise", o,
               "PUT /cse-in/ae HTTP/1.1\r\nX-M2M-Origin: Cae-1\r\n"
               "Content-Length: 5\r\n\r\nhello",
               1);
  httpreq_seed("pipelined", o,
               "GET /a HTTP/1.1\r\nX-M2M-RI: p1\r\n\r\n"
               "DELETE /b HTTP/1.1\r\nX-M2M-RI: p2\r\n\r\n"
               "HEAD /c HTTP/1.1\r\n\r\nOPTIONS * HTTP/1.1\r\n\r\n",
               7);
  httpreq_seed("chunked-trailer", o,
               "POST /cse-in/cnt HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
               "Content-Type: application/json;ty=4\r\n\r\n"
               "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
               5);
  httpreq_seed("http10-keep-alive", o,
               "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
               "GET / HTTP/1.0\r\n\r\n",
               0);
  httpreq_seed("connection-close", o,
               "PATCH /x HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n"
               "\r\n{}GET /after HTTP/1.1\r\n\r\n",
               0);
  httpreq_seed("empty-value", o,
               "GET /e HTTP/1.1\r\nX-Empty:\r\nX-Space:   \r\nX-M2M-RI:  v \r\n"
               "\r\n",
               3);
  httpreq_seed(
      "head-too-long", 0 | 2 << 2,
      "GET /a-target-longer-than-the-head-bound HTTP/1.1\r\n"
      "X-M2M-RI: h\r\nX-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
      0);
  httpreq_seed("body-too-long", 3 | 1 << 2,
               "POST / HTTP/1.1\r\nX-M2M-RI: b\r\nContent-Length: 17\r\n\r\n"
               "12345678901234567",
               0);
  httpreq_seed("chunked-too-long", 3 | 1 << 2,
               "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "a\r\n0123456789\r\na\r\n0123456789\r\n0\r\n\r\n",
               0);
  httpreq_seed("connect", o, "CONNECT cse:443 HTTP/1.1\r\nHost: cse\r\n\r\n",
               0);
  httpreq_seed("trace", o, "TRACE / HTTP/1.1\r\n\r\n", 0);
  httpreq_seed("http2", o, "GET / HTTP/2.0\r\n\r\n", 0);
  httpreq_seed("not-http", o, "NOT HTTP\r\n\r\n", 0);
  httpreq_seed("cl-and-chunked", o,
               "POST / HTTP/1.1\r\nContent-Length: 3\r\n"
               "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
               0);
  httpreq_seed("obs-fold", o,
               "GET / HTTP/1.1\r\nX-Folded: one\r\n two\r\nX-M2M-RI: f\r\n\r\n",
               0);
  httpreq_seed(
      "upgrade", o,
      "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
      "\r\nGET /next HTTP/1.1\r\n\r\n",
      0);
  httpreq_seed("blank-lines", 0 | 2 << 2, "\r\n\r\n\r\nGET / HTTP/1.1\r\n\r\n",
               0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: make_corpus OUTDIR [TARGET...]\n");
    return 2;
  }
  outdir = argv[1];
  if (argc > 2)
    only = argv + 2;
  if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
    perror(outdir);
    return 1;
  }
  responder_seeds(M2MPSK_TRANSPORT_TLS);
  responder_seeds(M2MPSK_TRANSPORT_DTLS);
  initiator_seeds();
  appdata_seeds();
  keyfile_seeds();
  identifier_seeds();
  listen_seeds();
  renegotiate_seeds();
  httpreq_seeds();
  printf("wrote %zu seeds under %s\n", nfiles, outdir);
  return 0;
}
