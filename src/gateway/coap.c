/* The gateway's CoAP binding (TS-0008) over DTLS-PSK: see coap.h.
 *
 * Bytes from devices and from the CSE are parsed by libcoap3
 * (coap_pdu_parse) and read through its option iterator; the few PDUs
 * the gateway sends are encoded here (libcoap 4.3 does not hand out the
 * bytes of a PDU it built), from the numbers and values libcoap parsed. */
#include "coap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <coap3/coap.h>

#include "gw.h"

/* oneM2M CoAP options (TS-0008 §6.2.2). */
enum {
  OPT_FR = 256,  /* oneM2M-FR: the originator */
  OPT_RQI = 257, /* oneM2M-RQI: the request identifier */
  OPT_RSC = 265, /* oneM2M-RSC: the response status code */
  OPT_TY = 267,  /* oneM2M-TY: the resource type of a CREATE */
  OPT_CONTENT_FORMAT = 12,
  CF_JSON = 50 /* application/json */
};

enum {
  T_CON = 0,
  T_NON = 1,
  T_ACK = 2,
  T_RST = 3,
  CODE_POST = 2,
  CODE_201 = (2 << 5) | 1,
  CODE_403 = (4 << 5) | 3,
  CODE_413 = (4 << 5) | 13,
  CODE_502 = (5 << 5) | 2,
  CODE_503 = (5 << 5) | 3,
  CODE_504 = (5 << 5) | 4,
  DATAGRAM_MAX = 65536,
  RECORD_MAX = 16384, /* one DTLS record, m2mpsk_assoc_write()'s bound */
  RECENT = 2,         /* answered CON requests remembered per peer */
  RECENT_MAX = 1152,  /* the largest answer remembered: a retransmission
                         of a request with a larger one goes to the CSE
                         again, so that a peer holds at most 2.3 KB */
  READ_BURST = 64     /* datagrams read per readiness callback */
};

typedef struct peer peer;
typedef struct exchange exchange;

/* One request forwarded to the CSE and not yet answered. */
struct exchange {
  peer *p;
  exchange *peer_next; /* in p->exchanges */
  exchange *tok_next;  /* in gc->by_token */
  exchange *mid_next;  /* in gc->by_mid */
  uint64_t token;      /* toward the CSE, 8 bytes */
  uint16_t be_mid;
  uint8_t sock; /* index of the backend socket */
  uint8_t dev_type;
  uint16_t dev_mid;
  uint8_t dev_tok[8];
  uint8_t dev_toklen;
  uint8_t ae_create;
  uint8_t acked; /* the CSE sent an empty ACK: a separate response comes */
  uint8_t tries;
  uint8_t *rqi; /* the request's RQI, for a 5.04 */
  size_t rqi_len;
  uint8_t *req; /* the encoded request, for retransmissions */
  size_t req_len;
  uint64_t deadline;
  struct event *timer;
};

typedef struct recent {
  uint16_t mid;
  uint8_t *bytes;
  size_t len;
} recent;

struct peer {
  gw_coap *gc;
  peer *next; /* hash chain */
  struct sockaddr_storage addr;
  socklen_t addr_len;
  uint8_t key[20];  /* family, port, address */
  uint8_t admitted; /* counted by gw_admit() */
  char name[64];    /* "host:port", for logs */
  char tag[64];     /* the host: the rate limiter's and the cookie's peer tag */
  m2mpsk_assoc *a;
  struct event *timer;
  uint64_t last_input;
  exchange *exchanges;
  unsigned inflight;
  uint16_t next_mid; /* for NON responses */
  recent recent[RECENT];
  unsigned recent_next;
  uint8_t logged;
  uint8_t closing; /* shutdown: close when the last exchange ends */
};

typedef struct backend_sock {
  gw_coap *gc;
  int fd;
  struct event *ev;
  uint16_t next_mid;
} backend_sock;

struct gw_coap {
  struct event_base *base;
  int fd;
  struct event *ev;
  gw_gateway *gw;
  m2mpsk_config *cfg;
  struct sockaddr_storage backend;
  socklen_t backend_len;
  uint32_t idle_ms, cse_ms, max_request, max_response;
  uint16_t identity_option;
  uint64_t seed;
  peer **peers;
  size_t npeers_buckets;
  size_t n_exchanges;
  exchange **by_token;
  exchange **by_mid;
  size_t nex_buckets;
  backend_sock bs[GW_COAP_BACKEND_SOCKETS];
  unsigned next_sock;
  uint64_t next_token;
  int shutting_down;
  gw_coap_stats st;
  uint8_t buf[DATAGRAM_MAX];
  uint8_t plain[RECORD_MAX + 1];
};

#ifndef GW_COAP_CODEC_ONLY
/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */
/* ---------------------------------------------------------------------- */

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* A keyed hash (FNV-1a under a random seed, then a 64-bit finaliser): a
 * peer cannot choose addresses that collide without knowing the seed. */
static uint64_t hash_bytes(uint64_t seed, const uint8_t *p, size_t n) {
  uint64_t h = seed ^ 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; i++)
    h = (h ^ p[i]) * 0x100000001b3ull;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdull;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ull;
  h ^= h >> 33;
  return h;
}

/* The peer's hash key: family, port, address. 0, or -1 for an unknown
 * family. */
static int addr_key(const struct sockaddr_storage *ss, uint8_t key[20]) {
  memset(key, 0, 20);
  if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
    key[0] = 4;
    memcpy(key + 2, &in->sin_port, 2);
    memcpy(key + 4, &in->sin_addr, 4);
    return 0;
  }
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
    key[0] = 6;
    memcpy(key + 2, &in6->sin6_port, 2);
    memcpy(key + 4, &in6->sin6_addr, 16);
    return 0;
  }
  return -1;
}

#endif /* GW_COAP_CODEC_ONLY */

/* ---------------------------------------------------------------------- */
/* Encoding the PDUs the gateway sends                                    */
/* ---------------------------------------------------------------------- */

typedef struct opt_ref {
  uint16_t num;
  const uint8_t *val;
  size_t len;
} opt_ref;

typedef struct pdu_out {
  uint8_t *p;
  size_t cap, len;
  int overflow;
  uint16_t last;
} pdu_out;

static void out_bytes(pdu_out *o, const void *b, size_t n) {
  if (n == 0)
    return; /* b may be NULL: an empty token or option value */
  if (o->overflow || o->cap - o->len < n) {
    o->overflow = 1;
    return;
  }
  memcpy(o->p + o->len, b, n);
  o->len += n;
}

static void out_header(pdu_out *o, unsigned type, unsigned code, uint16_t mid,
                       const uint8_t *tok, size_t toklen) {
  uint8_t h[4] = {(uint8_t)(0x40 | (type << 4) | toklen), (uint8_t)code,
                  (uint8_t)(mid >> 8), (uint8_t)mid};
  out_bytes(o, h, 4);
  out_bytes(o, tok, toklen);
  o->last = 0;
}

/* RFC 7252 §3.1: delta and length nibbles with their extended bytes.
 * Options must come in non-decreasing order. */
static void out_option(pdu_out *o, uint16_t num, const uint8_t *val,
                       size_t len) {
  if (num < o->last || len > 65535 + 269) {
    o->overflow = 1;
    return;
  }
  unsigned delta = num - o->last;
  uint8_t h[5];
  size_t n = 1;
  unsigned dn, ln;
  if (delta < 13) {
    dn = delta;
  } else if (delta < 269) {
    dn = 13;
  } else {
    dn = 14;
  }
  if (len < 13) {
    ln = (unsigned)len;
  } else if (len < 269) {
    ln = 13;
  } else {
    ln = 14;
  }
  h[0] = (uint8_t)(dn << 4 | ln);
  if (dn == 13) {
    h[n++] = (uint8_t)(delta - 13);
  } else if (dn == 14) {
    h[n++] = (uint8_t)((delta - 269) >> 8);
    h[n++] = (uint8_t)(delta - 269);
  }
  if (ln == 13) {
    h[n++] = (uint8_t)(len - 13);
  } else if (ln == 14) {
    h[n++] = (uint8_t)((len - 269) >> 8);
    h[n++] = (uint8_t)(len - 269);
  }
  out_bytes(o, h, n);
  out_bytes(o, val, len);
  o->last = num;
}

static void out_uint_option(pdu_out *o, uint16_t num, unsigned v) {
  uint8_t b[4];
  size_t n = 0;
  for (int s = 24; s >= 0; s -= 8)
    if (n > 0 || (v >> s) & 0xff)
      b[n++] = (uint8_t)(v >> s);
  out_option(o, num, b, n);
}

static void out_payload(pdu_out *o, const uint8_t *data, size_t len) {
  if (len == 0)
    return;
  uint8_t marker = 0xff;
  out_bytes(o, &marker, 1);
  out_bytes(o, data, len);
}

/* A response the gateway composes itself: RQI copied, RSC when not 0,
 * a JSON {"m2m:dbg": why} unless why is NULL. */
size_t gw_coap_encode_answer(uint8_t *buf, size_t cap, unsigned type,
                             unsigned code, uint16_t mid, const uint8_t *tok,
                             size_t toklen, const uint8_t *rqi, size_t rqi_len,
                             unsigned rsc, const char *why) {
  pdu_out o = {.p = buf, .cap = cap};
  char body[160];
  size_t n = why ? gw_gate_dbg_body(why, body, sizeof(body)) : 0;
  out_header(&o, type, code, mid, tok, toklen);
  if (why != NULL)
    out_uint_option(&o, OPT_CONTENT_FORMAT, CF_JSON);
  if (rqi != NULL)
    out_option(&o, OPT_RQI, rqi, rqi_len);
  if (rsc != 0)
    out_uint_option(&o, OPT_RSC, rsc);
  out_payload(&o, (const uint8_t *)body, n);
  return o.overflow ? 0 : o.len;
}

void gw_coap_view(const coap_pdu_t *pdu, gw_coap_request_info *v) {
  coap_opt_iterator_t oi;
  coap_opt_t *opt;
  memset(v, 0, sizeof(*v));
  v->ty = -1;
  coap_option_iterator_init(pdu, &oi, COAP_OPT_ALL);
  while ((opt = coap_option_next(&oi)) != NULL) {
    if (oi.number == OPT_FR) {
      if (v->from_count++ == 0) {
        v->from = coap_opt_value(opt);
        v->from_len = coap_opt_length(opt);
      }
    } else if (oi.number == OPT_RQI && v->rqi == NULL) {
      v->rqi = coap_opt_value(opt);
      v->rqi_len = coap_opt_length(opt);
    } else if (oi.number == OPT_TY && v->ty < 0) {
      /* A uint of at most 2 bytes (TS-0008); a longer one is present but
       * names no resource type (and libcoap's decoder would wrap). */
      v->ty = coap_opt_length(opt) <= 2
                  ? (int)coap_decode_var_bytes(coap_opt_value(opt),
                                               coap_opt_length(opt))
                  : GW_COAP_TY_INVALID;
    }
  }
}

size_t gw_coap_encode_forward(const coap_pdu_t *pdu, uint16_t identity_option,
                              const char *identity, uint16_t mid,
                              uint64_t token, uint8_t *buf, size_t cap) {
  pdu_out o = {.p = buf, .cap = cap};
  const char *id = identity ? identity : "";
  size_t idlen = strlen(id);
  int id_done = identity_option == 0;
  coap_opt_iterator_t oi;
  coap_opt_t *opt;
  uint8_t tok[8];
  memcpy(tok, &token, 8);
  out_header(&o, T_CON, coap_pdu_get_code(pdu), mid, tok, 8);
  coap_option_iterator_init(pdu, &oi, COAP_OPT_ALL);
  while ((opt = coap_option_next(&oi)) != NULL) {
    if (!id_done && oi.number >= identity_option) {
      out_option(&o, identity_option, (const uint8_t *)id, idlen);
      id_done = 1;
    }
    if (identity_option != 0 && oi.number == identity_option)
      continue;
    out_option(&o, oi.number, coap_opt_value(opt), coap_opt_length(opt));
  }
  if (!id_done)
    out_option(&o, identity_option, (const uint8_t *)id, idlen);
  size_t dlen;
  const uint8_t *data;
  if (coap_get_data(pdu, &dlen, &data))
    out_payload(&o, data, dlen);
  return o.overflow ? 0 : o.len;
}

size_t gw_coap_encode_relay(const coap_pdu_t *pdu, unsigned type, uint16_t mid,
                            const uint8_t *tok, size_t toklen, uint8_t *buf,
                            size_t cap, int *rsc, const uint8_t **body,
                            size_t *body_len) {
  pdu_out o = {.p = buf, .cap = cap};
  coap_opt_iterator_t oi;
  coap_opt_t *opt;
  *rsc = -1;
  *body = NULL;
  *body_len = 0;
  out_header(&o, type, coap_pdu_get_code(pdu), mid, tok, toklen);
  coap_option_iterator_init(pdu, &oi, COAP_OPT_ALL);
  while ((opt = coap_option_next(&oi)) != NULL) {
    if (oi.number == OPT_RSC && *rsc < 0)
      *rsc = coap_opt_length(opt) <= 2
                 ? (int)coap_decode_var_bytes(coap_opt_value(opt),
                                              coap_opt_length(opt))
                 : 0; /* not an RSC: never 2001 */
    out_option(&o, oi.number, coap_opt_value(opt), coap_opt_length(opt));
  }
  if (coap_get_data(pdu, body_len, body))
    out_payload(&o, *body, *body_len);
  return o.overflow ? 0 : o.len;
}

/* libcoap logs malformed input on its own; only the gateway's logger may
 * write, so libcoap's lines are dropped. */
static void coap_quiet(coap_log_t level, const char *message) {
  (void)level;
  (void)message;
}

static pthread_once_t g_coap_once = PTHREAD_ONCE_INIT;

static void coap_init_once(void) {
  coap_startup();
  coap_set_log_handler(coap_quiet);
  coap_set_log_level(LOG_EMERG);
}

coap_pdu_t *gw_coap_parse(const uint8_t *data, size_t len, size_t max) {
  pthread_once(&g_coap_once, coap_init_once);
  coap_pdu_t *pdu = coap_pdu_init(0, 0, 0, max);
  if (pdu == NULL)
    return NULL;
  if (len > max || !coap_pdu_parse(COAP_PROTO_UDP, data, len, pdu)) {
    coap_delete_pdu(pdu);
    return NULL;
  }
  return pdu;
}

#ifndef GW_COAP_CODEC_ONLY

/* ---------------------------------------------------------------------- */
/* Peers                                                                  */
/* ---------------------------------------------------------------------- */

static void peer_free(peer *p);
static void peer_timer_arm(peer *p);
static void gw_coap_maybe_done(gw_coap *gc);
static void exchange_free(exchange *ex);

static peer **peer_slot(gw_coap *gc, const uint8_t key[20]) {
  size_t b = hash_bytes(gc->seed, key, 20) & (gc->npeers_buckets - 1);
  peer **pp = &gc->peers[b];
  while (*pp != NULL && memcmp((*pp)->key, key, 20) != 0)
    pp = &(*pp)->next;
  return pp;
}

/* Sends what the association has to send. A datagram that cannot go out
 * now is lost, as on the wire. */
static void peer_flush(peer *p) {
  gw_coap *gc = p->gc;
  size_t n;
  while (m2mpsk_assoc_drain(p->a, gc->buf, sizeof(gc->buf), &n) == M2MPSK_OK)
    (void)sendto(gc->fd, gc->buf, n, MSG_NOSIGNAL, (struct sockaddr *)&p->addr,
                 p->addr_len);
}

/* Encrypts one CoAP message for the device. */
static void peer_send(peer *p, const uint8_t *msg, size_t len) {
  size_t w;
  if (len == 0 || len > RECORD_MAX)
    return;
  if (m2mpsk_assoc_write(p->a, msg, len, &w) != M2MPSK_OK)
    return;
  peer_flush(p);
}

static void peer_remember(peer *p, uint16_t mid, const uint8_t *msg,
                          size_t len) {
  recent *r = &p->recent[p->recent_next++ % RECENT];
  uint8_t *copy = len <= RECENT_MAX ? malloc(len) : NULL;
  free(r->bytes);
  r->bytes = copy;
  r->len = copy ? len : 0;
  r->mid = mid;
  if (copy)
    memcpy(copy, msg, len);
}

/* Answers a device's request from the gateway itself. */
static void peer_answer(peer *p, unsigned dev_type, uint16_t dev_mid,
                        const uint8_t *tok, size_t toklen, unsigned code,
                        const uint8_t *rqi, size_t rqi_len, unsigned rsc,
                        const char *why) {
  uint8_t msg[512];
  unsigned type = dev_type == T_CON ? T_ACK : T_NON;
  uint16_t mid = dev_type == T_CON ? dev_mid : p->next_mid++;
  if (rqi_len > 300)
    rqi = NULL, rqi_len = 0;
  size_t n = gw_coap_encode_answer(msg, sizeof(msg), type, code, mid, tok,
                                   toklen, rqi, rqi_len, rsc, why);
  peer_send(p, msg, n);
  if (dev_type == T_CON && n > 0)
    peer_remember(p, dev_mid, msg, n);
}

static void peer_log_outcome(peer *p) {
  m2mpsk_assoc *a = p->a;
  m2mpsk_state st = m2mpsk_assoc_state(a);
  if (p->logged || st == M2MPSK_STATE_HANDSHAKING ||
      st == M2MPSK_STATE_WAITING_KEY || st == M2MPSK_STATE_IDLE)
    return;
  p->logged = 1;
  if (m2mpsk_assoc_peer_id(a) != NULL) {
    const char *kpsa = m2mpsk_assoc_kpsa_id(a);
    gw_log("coap association peer=%s kpsa-id=%s bound=%s suite=%s", p->name,
           kpsa ? kpsa : "-", m2mpsk_assoc_peer_id(a),
           m2mpsk_assoc_suite(a) ? m2mpsk_assoc_suite(a) : "-");
  } else {
    gw_log("coap failure peer=%s reason=%s detail=\"%s\"", p->name,
           m2mpsk_reason_name(m2mpsk_assoc_failure(a)),
           m2mpsk_assoc_failure_detail(a));
  }
}

static void peer_unlink(peer *p) {
  gw_coap *gc = p->gc;
  peer **pp = peer_slot(gc, p->key);
  if (*pp == p)
    *pp = p->next;
  if (p->admitted)
    gw_release(gc->gw, (const struct sockaddr *)&p->addr);
  p->admitted = 0;
  gc->st.associations--;
}

static void peer_free(peer *p) {
  while (p->exchanges != NULL)
    exchange_free(p->exchanges);
  peer_unlink(p);
  if (p->timer != NULL)
    event_free(p->timer);
  m2mpsk_assoc_free(p->a);
  for (unsigned i = 0; i < RECENT; i++)
    free(p->recent[i].bytes);
  gw_coap *gc = p->gc;
  free(p);
  gw_coap_maybe_done(gc);
}

/* Ends an established association politely: close_notify, then free. */
static void peer_close(peer *p) {
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      m2mpsk_assoc_close(p->a) == M2MPSK_OK)
    peer_flush(p);
  peer_free(p);
}

static void peer_on_timer(evutil_socket_t fd, short what, void *arg);

static peer *peer_new(gw_coap *gc, const struct sockaddr_storage *addr,
                      socklen_t len, const uint8_t key[20], uint64_t now) {
  int adm = gw_admit(gc->gw, (const struct sockaddr *)addr);
  if (adm != GW_ADMIT_OK) {
    gc->st.dropped++;
    return NULL;
  }
  peer *p = calloc(1, sizeof(*p));
  if (p == NULL) {
    gw_release(gc->gw, (const struct sockaddr *)addr);
    return NULL;
  }
  p->gc = gc;
  p->addr = *addr;
  p->addr_len = len;
  p->admitted = 1;
  memcpy(p->key, key, 20);
  gw_format_addr((const struct sockaddr *)addr, 1, p->name, sizeof(p->name));
  gw_format_addr((const struct sockaddr *)addr, 0, p->tag, sizeof(p->tag));
  p->last_input = now;
  p->timer = evtimer_new(gc->base, peer_on_timer, p);
  int rc = p->timer == NULL
               ? M2MPSK_E_NOMEM
               : gw_assoc_new(gc->gw, M2MPSK_TRANSPORT_DTLS, p->tag, &p->a);
  if (rc != M2MPSK_OK) {
    if (rc == M2MPSK_E_FAILED)
      gw_log("coap failure peer=%s reason=%s", p->name,
             m2mpsk_reason_name(m2mpsk_assoc_failure(p->a)));
    else
      gw_trace("coap peer=%s: no association: %s", p->name,
               m2mpsk_strerror(rc));
    gc->st.dropped++;
    if (p->timer != NULL)
      event_free(p->timer);
    m2mpsk_assoc_free(p->a);
    gw_release(gc->gw, (const struct sockaddr *)addr);
    free(p);
    return NULL;
  }
  p->next_mid = (uint16_t)(gc->seed >> 16);
  peer **pp = peer_slot(gc, key);
  p->next = *pp;
  *pp = p;
  gc->st.associations++;
  gc->st.created++;
  gw_trace("coap peer=%s: new association", p->name);
  return p;
}

/* ---------------------------------------------------------------------- */
/* Exchanges with the CSE                                                 */
/* ---------------------------------------------------------------------- */

static size_t tok_bucket(const gw_coap *gc, uint64_t token) {
  return hash_bytes(gc->seed ^ 2, (const uint8_t *)&token, 8) &
         (gc->nex_buckets - 1);
}

static size_t mid_bucket(const gw_coap *gc, unsigned sock, uint16_t mid) {
  uint8_t k[3] = {(uint8_t)sock, (uint8_t)(mid >> 8), (uint8_t)mid};
  return hash_bytes(gc->seed ^ 3, k, 3) & (gc->nex_buckets - 1);
}

static exchange *exchange_by_token(gw_coap *gc, const uint8_t *tok,
                                   size_t len) {
  uint64_t t;
  if (len != 8)
    return NULL;
  memcpy(&t, tok, 8);
  exchange *ex = gc->by_token[tok_bucket(gc, t)];
  while (ex != NULL && ex->token != t)
    ex = ex->tok_next;
  return ex;
}

static exchange *exchange_by_mid(gw_coap *gc, unsigned sock, uint16_t mid) {
  exchange *ex = gc->by_mid[mid_bucket(gc, sock, mid)];
  while (ex != NULL && (ex->sock != sock || ex->be_mid != mid))
    ex = ex->mid_next;
  return ex;
}

static void exchange_free(exchange *ex) {
  gw_coap *gc = ex->p->gc;
  exchange **pp = &gc->by_token[tok_bucket(gc, ex->token)];
  while (*pp != NULL && *pp != ex)
    pp = &(*pp)->tok_next;
  if (*pp == ex)
    *pp = ex->tok_next;
  pp = &gc->by_mid[mid_bucket(gc, ex->sock, ex->be_mid)];
  while (*pp != NULL && *pp != ex)
    pp = &(*pp)->mid_next;
  if (*pp == ex)
    *pp = ex->mid_next;
  pp = &ex->p->exchanges;
  while (*pp != NULL && *pp != ex)
    pp = &(*pp)->peer_next;
  if (*pp == ex)
    *pp = ex->peer_next;
  ex->p->inflight--;
  gc->n_exchanges--;
  if (ex->timer != NULL)
    event_free(ex->timer);
  free(ex->rqi);
  free(ex->req);
  free(ex);
}

/* After an exchange ends: a peer closing for shutdown goes when idle. */
static void exchange_done(exchange *ex) {
  peer *p = ex->p;
  exchange_free(ex);
  if (p->closing && p->exchanges == NULL)
    peer_close(p);
}

static void exchange_send(exchange *ex) {
  gw_coap *gc = ex->p->gc;
  (void)send(gc->bs[ex->sock].fd, ex->req, ex->req_len, MSG_NOSIGNAL);
  ex->tries++;
}

static void exchange_arm(exchange *ex, uint64_t now) {
  uint64_t at = ex->deadline;
  if (!ex->acked && ex->tries <= GW_COAP_MAX_RETRANSMIT) {
    uint64_t next = now + ((uint64_t)GW_COAP_ACK_TIMEOUT_MS << (ex->tries - 1));
    if (next < at)
      at = next;
  }
  uint64_t wait = at > now ? at - now : 0;
  struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                       .tv_usec = (suseconds_t)(wait % 1000) * 1000};
  evtimer_add(ex->timer, &tv);
}

static void exchange_on_timer(evutil_socket_t fd, short what, void *arg) {
  exchange *ex = arg;
  uint64_t now = now_ms();
  (void)fd;
  (void)what;
  if (now >= ex->deadline) {
    peer *p = ex->p;
    p->gc->st.timeouts++;
    gw_log("coap peer=%s: the CSE did not answer within %u ms", p->name,
           (unsigned)p->gc->cse_ms);
    peer_answer(p, ex->dev_type, ex->dev_mid, ex->dev_tok, ex->dev_toklen,
                CODE_504, ex->rqi, ex->rqi_len, 0, "gateway timeout");
    exchange_done(ex);
    return;
  }
  if (!ex->acked && ex->tries <= GW_COAP_MAX_RETRANSMIT)
    exchange_send(ex);
  exchange_arm(ex, now);
}

/* ---------------------------------------------------------------------- */
/* Requests from devices                                                  */
/* ---------------------------------------------------------------------- */

/* Answers a retransmitted CON from memory, or ignores it while its first
 * copy is in flight. 1 when it was a duplicate. */
static int peer_duplicate(peer *p, unsigned type, uint16_t mid) {
  if (type != T_CON)
    return 0;
  for (unsigned i = 0; i < RECENT; i++)
    if (p->recent[i].bytes != NULL && p->recent[i].mid == mid) {
      peer_send(p, p->recent[i].bytes, p->recent[i].len);
      return 1;
    }
  for (exchange *ex = p->exchanges; ex != NULL; ex = ex->peer_next)
    if (ex->dev_type == T_CON && ex->dev_mid == mid)
      return 1;
  return 0;
}

static void forward(gw_coap *gc, peer *p, coap_pdu_t *pdu, unsigned type,
                    uint16_t mid, coap_bin_const_t tok,
                    const gw_coap_request_info *v, int ae_create) {
  if (p->inflight >= GW_COAP_MAX_INFLIGHT) {
    gc->st.dropped++;
    peer_answer(p, type, mid, tok.s, tok.length, CODE_503, v->rqi, v->rqi_len,
                0, "too many requests in flight");
    return;
  }
  exchange *ex = calloc(1, sizeof(*ex));
  uint64_t token = gc->next_token++ ^ gc->seed;
  unsigned sock = gc->next_sock++ % GW_COAP_BACKEND_SOCKETS;
  uint16_t be_mid = gc->bs[sock].next_mid++;
  /* Encoded into the scratch buffer (the device's bytes are in plain[]),
   * then kept at its size for retransmissions. */
  size_t req_len =
      gw_coap_encode_forward(pdu, gc->identity_option, gw_gate_identity(p->a),
                             be_mid, token, gc->buf, sizeof(gc->buf));
  uint8_t *req = malloc(req_len > 0 ? req_len : 1);
  if (ex != NULL)
    ex->timer = evtimer_new(gc->base, exchange_on_timer, ex);
  if (ex == NULL || req == NULL || ex->timer == NULL) {
    if (ex != NULL && ex->timer != NULL)
      event_free(ex->timer);
    free(ex);
    free(req);
    peer_answer(p, type, mid, tok.s, tok.length, CODE_503, v->rqi, v->rqi_len,
                0, "out of memory");
    return;
  }
  ex->p = p;
  ex->token = token;
  ex->sock = (uint8_t)sock;
  ex->be_mid = be_mid;
  ex->dev_type = (uint8_t)type;
  ex->dev_mid = mid;
  ex->dev_toklen = (uint8_t)tok.length;
  memcpy(ex->dev_tok, tok.s, tok.length);
  ex->ae_create = (uint8_t)ae_create;
  if (v->rqi_len > 0 && v->rqi_len <= 300 &&
      (ex->rqi = malloc(v->rqi_len)) != NULL) {
    memcpy(ex->rqi, v->rqi, v->rqi_len);
    ex->rqi_len = v->rqi_len;
  }
  memcpy(req, gc->buf, req_len);
  ex->req_len = req_len;
  ex->req = req;
  /* Linked before any exit, so that exchange_free() undoes it all. */
  ex->peer_next = p->exchanges;
  p->exchanges = ex;
  p->inflight++;
  gc->n_exchanges++;
  size_t tb = tok_bucket(gc, ex->token);
  ex->tok_next = gc->by_token[tb];
  gc->by_token[tb] = ex;
  size_t mb = mid_bucket(gc, ex->sock, ex->be_mid);
  ex->mid_next = gc->by_mid[mb];
  gc->by_mid[mb] = ex;
  if (ex->req_len == 0) {
    peer_answer(p, type, mid, tok.s, tok.length, CODE_413, v->rqi, v->rqi_len,
                0, "request too large");
    exchange_free(ex);
    return;
  }
  uint64_t now = now_ms();
  ex->deadline = now + gc->cse_ms;
  gc->st.forwarded++;
  exchange_send(ex);
  exchange_arm(ex, now);
}

/* One decrypted datagram from an established association. */
static void on_device_message(gw_coap *gc, peer *p, const uint8_t *msg,
                              size_t len) {
  coap_pdu_t *pdu = gw_coap_parse(msg, len, RECORD_MAX + 1);
  if (pdu == NULL) {
    gc->st.malformed++;
    gw_trace("coap peer=%s: malformed CoAP message dropped", p->name);
    return;
  }
  unsigned type = coap_pdu_get_type(pdu);
  unsigned code = coap_pdu_get_code(pdu);
  uint16_t mid = (uint16_t)coap_pdu_get_mid(pdu);
  coap_bin_const_t tok = coap_pdu_get_token(pdu);
  if (code == 0) {
    /* A CoAP ping (empty CON) gets a RST; empty ACK/RST need nothing. */
    if (type == T_CON) {
      uint8_t rst[4];
      pdu_out o = {.p = rst, .cap = sizeof(rst)};
      out_header(&o, T_RST, 0, mid, NULL, 0);
      peer_send(p, rst, o.len);
    }
    coap_delete_pdu(pdu);
    return;
  }
  if ((code >> 5) != 0 || (type != T_CON && type != T_NON)) {
    /* Responses from a device have nothing to answer here. */
    coap_delete_pdu(pdu);
    return;
  }
  if (peer_duplicate(p, type, mid)) {
    coap_delete_pdu(pdu);
    return;
  }
  gw_coap_request_info v;
  gw_coap_view(pdu, &v);
  if (len > gc->max_request) {
    gc->st.dropped++;
    peer_answer(p, type, mid, tok.s, tok.length, CODE_413, v.rqi, v.rqi_len, 0,
                "request too large");
    coap_delete_pdu(pdu);
    return;
  }
  int ae_create = code == CODE_POST && v.ty == 2;
  char from[M2MPSK_ID_MAX + 1];
  int rsc = 0;
  const char *why = NULL;
  if (v.from_count > 1) {
    rsc = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
    why = "more than one originator";
  } else if (v.from_len > M2MPSK_ID_MAX ||
             (v.from != NULL && memchr(v.from, 0, v.from_len) != NULL)) {
    rsc = M2MPSK_ORIGINATOR_NOT_AUTHENTICATED;
    why = "malformed originator";
  } else {
    if (v.from != NULL)
      memcpy(from, v.from, v.from_len);
    from[v.from != NULL ? v.from_len : 0] = '\0';
    rsc = gw_gate_request(p->a, v.from != NULL ? from : NULL, ae_create, &why);
  }
  if (rsc != 0) {
    gc->st.refused++;
    gw_log("coap peer=%s bound=%s from=%.*s refused %d: %s", p->name,
           m2mpsk_assoc_peer_id(p->a),
           (int)(v.from_len > 128 ? 128 : v.from_len),
           v.from ? (const char *)v.from : "", rsc, why ? why : "");
    peer_answer(p, type, mid, tok.s, tok.length, CODE_403, v.rqi, v.rqi_len,
                (unsigned)rsc, why ? why : "originator refused");
    coap_delete_pdu(pdu);
    return;
  }
  forward(gc, p, pdu, type, mid, tok, &v, ae_create);
  coap_delete_pdu(pdu);
}

/* ---------------------------------------------------------------------- */
/* Responses from the CSE                                                 */
/* ---------------------------------------------------------------------- */

/* Relays the CSE's response to the device that asked, and lets the gate
 * bind an AE-ID from an <AE> CREATE's 2.01. */
static void deliver(gw_coap *gc, exchange *ex, coap_pdu_t *pdu, size_t len) {
  peer *p = ex->p;
  unsigned code = coap_pdu_get_code(pdu);
  if (len > gc->max_response || len + 8 > RECORD_MAX) {
    gw_log("coap peer=%s: the CSE's response (%zu bytes) is "
           "over the limit",
           p->name, len);
    peer_answer(p, ex->dev_type, ex->dev_mid, ex->dev_tok, ex->dev_toklen,
                CODE_502, ex->rqi, ex->rqi_len, 0, "response too large");
    exchange_done(ex);
    return;
  }
  unsigned type = ex->dev_type == T_CON ? T_ACK : T_NON;
  uint16_t mid = ex->dev_type == T_CON ? ex->dev_mid : p->next_mid++;
  int rsc = -1;
  size_t dlen = 0;
  const uint8_t *data = NULL;
  size_t out_len =
      gw_coap_encode_relay(pdu, type, mid, ex->dev_tok, ex->dev_toklen,
                           gc->plain, RECORD_MAX, &rsc, &data, &dlen);
  if (ex->ae_create && code == CODE_201) {
    const char *why = NULL;
    if (gw_gate_response(p->a, 1, rsc, data, dlen, &why) < 0)
      gw_log("coap peer=%s: AE-ID not bound: %s", p->name,
             why ? why : "unknown");
    else if (!m2mpsk_assoc_peer_id_is_credential(p->a))
      gw_trace("coap peer=%s: bound to %s", p->name,
               m2mpsk_assoc_peer_id(p->a));
  }
  if (out_len > 0) {
    peer_send(p, gc->plain, out_len);
    if (ex->dev_type == T_CON)
      peer_remember(p, ex->dev_mid, gc->plain, out_len);
  }
  exchange_done(ex);
}

static void on_backend_datagram(gw_coap *gc, unsigned sock, const uint8_t *d,
                                size_t len) {
  coap_pdu_t *pdu = gw_coap_parse(d, len, DATAGRAM_MAX);
  if (pdu == NULL) {
    gc->st.malformed++;
    gw_trace("coap: malformed CoAP message from the CSE dropped");
    return;
  }
  unsigned type = coap_pdu_get_type(pdu);
  unsigned code = coap_pdu_get_code(pdu);
  uint16_t mid = (uint16_t)coap_pdu_get_mid(pdu);
  coap_bin_const_t tok = coap_pdu_get_token(pdu);
  exchange *ex = NULL;
  if (type == T_ACK || type == T_RST) {
    ex = exchange_by_mid(gc, sock, mid);
    if (ex != NULL && type == T_RST) {
      peer_answer(ex->p, ex->dev_type, ex->dev_mid, ex->dev_tok, ex->dev_toklen,
                  CODE_502, ex->rqi, ex->rqi_len, 0,
                  "the CSE reset the request");
      exchange_done(ex);
    } else if (ex != NULL && code == 0) {
      ex->acked = 1; /* a separate response follows */
      exchange_arm(ex, now_ms());
    } else if (ex != NULL && (code >> 5) >= 2 &&
               exchange_by_token(gc, tok.s, tok.length) == ex) {
      deliver(gc, ex, pdu, len);
    }
    coap_delete_pdu(pdu);
    return;
  }
  /* A separate response (CON or NON), matched by its token. */
  if ((code >> 5) >= 2)
    ex = exchange_by_token(gc, tok.s, tok.length);
  if (type == T_CON) {
    uint8_t ack[4];
    pdu_out o = {.p = ack, .cap = sizeof(ack)};
    out_header(&o, ex != NULL ? T_ACK : T_RST, 0, mid, NULL, 0);
    (void)send(gc->bs[sock].fd, ack, o.len, MSG_NOSIGNAL);
  }
  if (ex != NULL && ex->sock == sock)
    deliver(gc, ex, pdu, len);
  coap_delete_pdu(pdu);
}

static void on_backend_readable(evutil_socket_t fd, short what, void *arg) {
  backend_sock *bs = arg;
  gw_coap *gc = bs->gc;
  (void)what;
  unsigned sock = (unsigned)(bs - gc->bs);
  for (int i = 0; i < READ_BURST; i++) {
    ssize_t n = recv(fd, gc->buf, sizeof(gc->buf), MSG_DONTWAIT);
    if (n < 0 && errno != ECONNREFUSED)
      return; /* EAGAIN; ICMP port unreachable is skipped: 5.04 later */
    if (n <= 0)
      continue; /* an empty datagram is not a CoAP message */
    on_backend_datagram(gc, sock, gc->buf, (size_t)n);
  }
}

/* ---------------------------------------------------------------------- */
/* DTLS                                                                   */
/* ---------------------------------------------------------------------- */

/* Moves an association along after input or a timer; frees it when it
 * ended. 0, or -1 when it was freed. */
static int peer_process(peer *p) {
  gw_coap *gc = p->gc;
  m2mpsk_state st = m2mpsk_assoc_state(p->a);
  peer_log_outcome(p);
  while (st == M2MPSK_STATE_ESTABLISHED) {
    size_t n;
    int rc = m2mpsk_assoc_read(p->a, gc->plain, sizeof(gc->plain), &n);
    if (rc == M2MPSK_OK) {
      if (!p->closing)
        on_device_message(gc, p, gc->plain, n);
    } else if (rc == M2MPSK_E_CLOSED) {
      if (m2mpsk_assoc_close(p->a) == M2MPSK_OK)
        peer_flush(p);
      gw_trace("coap peer=%s: close_notify received", p->name);
      peer_free(p);
      return -1;
    } else {
      break;
    }
    st = m2mpsk_assoc_state(p->a);
  }
  peer_flush(p);
  st = m2mpsk_assoc_state(p->a);
  if (st == M2MPSK_STATE_FAILED || st == M2MPSK_STATE_CLOSED) {
    if (st == M2MPSK_STATE_FAILED && p->logged &&
        m2mpsk_assoc_peer_id(p->a) != NULL)
      gw_log("coap failure peer=%s reason=%s detail=\"%s\"", p->name,
             m2mpsk_reason_name(m2mpsk_assoc_failure(p->a)),
             m2mpsk_assoc_failure_detail(p->a));
    peer_free(p);
    return -1;
  }
  peer_timer_arm(p);
  return 0;
}

static void peer_timer_arm(peer *p) {
  gw_coap *gc = p->gc;
  uint64_t now = now_ms(), at = UINT64_MAX, d;
  if (m2mpsk_assoc_next_timeout(p->a, &d) == M2MPSK_OK)
    at = d;
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      p->last_input + gc->idle_ms < at)
    at = p->last_input + gc->idle_ms;
  if (at == UINT64_MAX) {
    evtimer_del(p->timer);
    return;
  }
  uint64_t wait = at > now ? at - now : 0;
  struct timeval tv = {.tv_sec = (time_t)(wait / 1000),
                       .tv_usec = (suseconds_t)(wait % 1000) * 1000};
  evtimer_add(p->timer, &tv);
}

static void peer_on_timer(evutil_socket_t fd, short what, void *arg) {
  peer *p = arg;
  gw_coap *gc = p->gc;
  uint64_t now = now_ms(), d;
  (void)fd;
  (void)what;
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      now >= p->last_input + gc->idle_ms && p->exchanges == NULL) {
    gw_trace("coap peer=%s: idle for %u ms, association ended", p->name,
             (unsigned)gc->idle_ms);
    peer_close(p);
    return;
  }
  /* A failure shows in the state, which peer_process() reads. */
  if (m2mpsk_assoc_next_timeout(p->a, &d) == M2MPSK_OK && d <= now &&
      m2mpsk_assoc_handle_timeout(p->a, now) == M2MPSK_OK)
    p->gc->st.retransmits++;
  if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
      now >= p->last_input + gc->idle_ms) {
    /* Idle but waiting for the CSE: look again when that is over. */
    p->last_input = now - gc->idle_ms + gc->cse_ms;
  }
  (void)peer_process(p);
}

/* A plain CoAP request to the DTLS port: oneM2M's answer is 4107
 * SECURITY_ASSOCIATION_REQUIRED. The source may be forged, so the answer
 * is stateless, carries no payload and goes out only when it is no larger
 * than the request: no amplification. */
static void answer_unsecured(gw_coap *gc, const struct sockaddr_storage *addr,
                             socklen_t alen, const uint8_t *d, size_t n) {
  coap_pdu_t *pdu = gw_coap_parse(d, n, n);
  if (pdu == NULL) {
    gc->st.dropped++;
    return;
  }
  unsigned type = coap_pdu_get_type(pdu);
  unsigned code = coap_pdu_get_code(pdu);
  if ((type == T_CON || type == T_NON) && code != 0 && (code >> 5) == 0) {
    gw_coap_request_info v;
    uint8_t msg[512];
    coap_bin_const_t tok = coap_pdu_get_token(pdu);
    uint16_t mid = (uint16_t)coap_pdu_get_mid(pdu);
    gw_coap_view(pdu, &v);
    if (v.rqi_len > 300)
      v.rqi = NULL, v.rqi_len = 0;
    size_t len = gw_coap_encode_answer(
        msg, sizeof(msg), type == T_CON ? T_ACK : T_NON, CODE_403, mid, tok.s,
        tok.length, v.rqi, v.rqi_len,
        M2MPSK_ORIGINATOR_SECURITY_ASSOCIATION_REQUIRED, NULL);
    if (len > 0 && len <= n) {
      (void)sendto(gc->fd, msg, len, MSG_NOSIGNAL,
                   (const struct sockaddr *)addr, alen);
      gc->st.refused++;
    }
  }
  coap_delete_pdu(pdu);
}

/* The stateless front door for a datagram without an association: 1 when
 * it admits a ClientHello with a valid cookie (create the association),
 * 0 when it was answered (HelloVerifyRequest, 4107) or dropped. */
static int front_door(gw_coap *gc, const struct sockaddr_storage *addr,
                      socklen_t alen, const char *tag, const uint8_t *d,
                      size_t n, int plain_answer) {
  /* No state before a valid cookie: a ClientHello without one gets a
   * HelloVerifyRequest, never larger than the ClientHello. */
  uint8_t hvr[256];
  size_t hvr_len = 0;
  int rc = m2mpsk_dtls_listen(gc->cfg, tag, d, n, hvr, sizeof(hvr), &hvr_len);
  if (rc == M2MPSK_LISTEN_REPLY) {
    if (hvr_len <= n) {
      (void)sendto(gc->fd, hvr, hvr_len, MSG_NOSIGNAL,
                   (const struct sockaddr *)addr, alen);
      gc->st.hello_verify++;
    } else {
      gc->st.dropped++;
    }
    return 0;
  }
  if (rc == M2MPSK_E_PROTOCOL && plain_answer) {
    answer_unsecured(gc, addr, alen, d, n);
    return 0;
  }
  if (rc != M2MPSK_LISTEN_ACCEPT) {
    gc->st.dropped++;
    return 0;
  }
  return 1;
}

/* A DTLS record of epoch 0 carrying a handshake message: from an
 * established peer, a device that restarted with the same address and
 * port (RFC 6347 §4.2.8). Only the record header is looked at; the
 * ClientHello itself is m2mpsk_dtls_listen's to read. */
static int looks_like_new_hello(const uint8_t *d, size_t n) {
  return n > 13 && d[0] == 22 && d[3] == 0 && d[4] == 0;
}

static void on_device_datagram(gw_coap *gc, const struct sockaddr_storage *addr,
                               socklen_t alen, const uint8_t *d, size_t n) {
  uint8_t key[20];
  if (addr_key(addr, key) != 0)
    return;
  peer *p = *peer_slot(gc, key);
  uint64_t now = now_ms();
  if (p != NULL && !gc->shutting_down && looks_like_new_hello(d, n) &&
      m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED) {
    /* Replaced only once the new handshake proves the address with a
     * cookie: a forged ClientHello cannot end a live association. */
    if (!front_door(gc, addr, alen, p->tag, d, n, 0))
      return;
    gw_trace("coap peer=%s: a new handshake replaces the association", p->name);
    peer_free(p);
    p = NULL;
    p = peer_new(gc, addr, alen, key, now);
    if (p == NULL)
      return;
  } else if (p == NULL) {
    char tag[64];
    if (gc->shutting_down)
      return;
    gw_format_addr((const struct sockaddr *)addr, 0, tag, sizeof(tag));
    if (m2mpsk_config_peer_blocked(gc->cfg, tag, now, NULL) == 1) {
      gc->st.dropped++;
      return;
    }
    if (!front_door(gc, addr, alen, tag, d, n, 1))
      return;
    p = peer_new(gc, addr, alen, key, now);
    if (p == NULL)
      return;
  }
  p->last_input = now;
  int rc = m2mpsk_assoc_feed(p->a, d, n, now);
  if (rc != M2MPSK_OK && rc != M2MPSK_E_FAILED && rc != M2MPSK_E_STATE)
    gc->st.dropped++;
  (void)peer_process(p);
}

static void on_device_readable(evutil_socket_t fd, short what, void *arg) {
  gw_coap *gc = arg;
  (void)what;
  for (int i = 0; i < READ_BURST; i++) {
    struct sockaddr_storage addr;
    socklen_t alen = sizeof(addr);
    ssize_t n = recvfrom(fd, gc->buf, sizeof(gc->buf), MSG_DONTWAIT,
                         (struct sockaddr *)&addr, &alen);
    if (n < 0)
      return;
    if (n == 0)
      continue; /* an empty datagram: nothing to answer */
    on_device_datagram(gc, &addr, alen, gc->buf, (size_t)n);
    if (gc->shutting_down)
      return;
  }
}

/* ---------------------------------------------------------------------- */
/* Life cycle                                                             */
/* ---------------------------------------------------------------------- */

static size_t pow2_at_least(size_t n, size_t lo, size_t hi) {
  size_t b = lo;
  while (b < n && b < hi)
    b <<= 1;
  return b;
}

gw_coap *gw_coap_new(const gw_coap_opts *o, char *err, size_t errlen) {
  if (o == NULL || o->base == NULL || o->fd < 0 || o->gw == NULL ||
      o->gw->cfg == NULL || o->gw->coap_backend_addr_len == 0) {
    snprintf(err, errlen, "coap: missing options");
    return NULL;
  }
  gw_coap *gc = calloc(1, sizeof(*gc));
  if (gc == NULL) {
    snprintf(err, errlen, "coap: out of memory");
    return NULL;
  }
  gc->base = o->base;
  gc->fd = -1;
  const gw_opts *go = &o->gw->opts;
  gc->gw = o->gw;
  gc->cfg = o->gw->cfg;
  gc->backend = o->gw->coap_backend_addr;
  gc->backend_len = o->gw->coap_backend_addr_len;
  gc->idle_ms = go->idle_timeout_ms ? go->idle_timeout_ms : 300000;
  gc->cse_ms = go->cse_timeout_ms ? go->cse_timeout_ms : GW_COAP_EXCHANGE_MS;
  gc->max_request = go->max_request && go->max_request < RECORD_MAX
                        ? (uint32_t)go->max_request
                        : RECORD_MAX;
  gc->max_response = go->max_response && go->max_response < RECORD_MAX
                         ? (uint32_t)go->max_response
                         : RECORD_MAX;
  gc->identity_option = (uint16_t)go->identity_option;
  size_t max_conn = go->max_conn ? go->max_conn : 1024;
  for (unsigned i = 0; i < GW_COAP_BACKEND_SOCKETS; i++)
    gc->bs[i].fd = -1;
  if (getrandom(&gc->seed, sizeof(gc->seed), 0) != sizeof(gc->seed))
    gc->seed = (uint64_t)now_ms() * 0x9e3779b97f4a7c15ull;
  gc->next_token = gc->seed * 0x9e3779b97f4a7c15ull;
  gc->npeers_buckets = pow2_at_least(max_conn, 64, 1u << 20);
  gc->nex_buckets = pow2_at_least(max_conn, 64, 1u << 16);
  gc->peers = calloc(gc->npeers_buckets, sizeof(*gc->peers));
  gc->by_token = calloc(gc->nex_buckets, sizeof(*gc->by_token));
  gc->by_mid = calloc(gc->nex_buckets, sizeof(*gc->by_mid));
  if (gc->peers == NULL || gc->by_token == NULL || gc->by_mid == NULL) {
    snprintf(err, errlen, "coap: out of memory");
    gw_coap_free(gc);
    return NULL;
  }
  for (unsigned i = 0; i < GW_COAP_BACKEND_SOCKETS; i++) {
    backend_sock *bs = &gc->bs[i];
    bs->gc = gc;
    bs->fd = socket(gc->backend.ss_family,
                    SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (bs->fd < 0 || connect(bs->fd, (struct sockaddr *)&gc->backend,
                              gc->backend_len) != 0) {
      snprintf(err, errlen, "coap: cannot reach --coap-backend: %s",
               strerror(errno));
      gw_coap_free(gc);
      return NULL;
    }
    bs->next_mid =
        (uint16_t)(hash_bytes(gc->seed ^ 4, (const uint8_t *)&i, sizeof(i)) >>
                   48);
    bs->ev = event_new(gc->base, bs->fd, EV_READ | EV_PERSIST,
                       on_backend_readable, bs);
    if (bs->ev == NULL || event_add(bs->ev, NULL) != 0) {
      snprintf(err, errlen, "coap: cannot watch the backend socket");
      gw_coap_free(gc);
      return NULL;
    }
  }
  gc->ev =
      event_new(gc->base, o->fd, EV_READ | EV_PERSIST, on_device_readable, gc);
  if (gc->ev == NULL || event_add(gc->ev, NULL) != 0) {
    snprintf(err, errlen, "coap: cannot watch the listening socket");
    gw_coap_free(gc);
    return NULL;
  }
  gc->fd = o->fd;
  return gc;
}

static void gw_coap_maybe_done(gw_coap *gc) {
  if (!gc->shutting_down || gc->st.associations > 0)
    return;
  for (unsigned i = 0; i < GW_COAP_BACKEND_SOCKETS; i++)
    if (gc->bs[i].ev != NULL)
      event_del(gc->bs[i].ev);
}

void gw_coap_shutdown(gw_coap *gc) {
  if (gc == NULL || gc->shutting_down)
    return;
  gc->shutting_down = 1;
  if (gc->ev != NULL)
    event_del(gc->ev);
  for (size_t b = 0; b < gc->npeers_buckets; b++) {
    peer *p = gc->peers[b];
    while (p != NULL) {
      peer *next = p->next;
      p->closing = 1;
      if (p->exchanges == NULL)
        peer_close(p);
      p = next;
    }
  }
  gw_coap_maybe_done(gc);
}

int gw_coap_idle(const gw_coap *gc) {
  return gc == NULL || (gc->shutting_down && gc->st.associations == 0);
}

void gw_coap_get_stats(const gw_coap *gc, gw_coap_stats *out) {
  if (gc == NULL) {
    memset(out, 0, sizeof(*out));
    return;
  }
  *out = gc->st;
}

void gw_coap_free(gw_coap *gc) {
  if (gc == NULL)
    return;
  for (size_t b = 0; gc->peers != NULL && b < gc->npeers_buckets; b++)
    while (gc->peers[b] != NULL)
      peer_free(gc->peers[b]);
  for (unsigned i = 0; i < GW_COAP_BACKEND_SOCKETS; i++) {
    if (gc->bs[i].ev != NULL)
      event_free(gc->bs[i].ev);
    if (gc->bs[i].fd >= 0)
      close(gc->bs[i].fd);
  }
  if (gc->ev != NULL)
    event_free(gc->ev);
  if (gc->fd >= 0)
    close(gc->fd);
  free(gc->peers);
  free(gc->by_token);
  free(gc->by_mid);
  free(gc);
}

/* ---------------------------------------------------------------------- */
/* gw.h's worker interface                                                */
/* ---------------------------------------------------------------------- */

struct gw_coap_worker {
  gw_coap *gc;
};

int gw_coap_worker_start(gw_worker *w) {
  gw_gateway *gw = w->gw;
  char err[256];
  int fd;
  if (w->index == 0) {
    /* Cookies always: a config whose engine has no cookie exchange
     * (BoringSSL) cannot serve DTLS here. One byte is no ClientHello, so
     * the call answers E_PROTOCOL when it could do the exchange. */
    static const uint8_t probe[1] = {0};
    uint8_t out[64];
    size_t out_len;
    int rc = m2mpsk_dtls_listen(gw->cfg, "probe", probe, sizeof(probe), out,
                                sizeof(out), &out_len);
    if (rc == M2MPSK_E_UNSUPPORTED || rc == M2MPSK_E_BACKEND) {
      gw_log("--coap-listen needs the DTLS cookie exchange, which only the "
             "OpenSSL engine has: %s",
             m2mpsk_strerror(rc));
      return -1;
    }
  }
  if (gw->coap_backend_addr_len == 0 &&
      gw_resolve(gw->opts.coap_backend, SOCK_DGRAM, 0, &gw->coap_backend_addr,
                 &gw->coap_backend_addr_len, err, sizeof(err)) != 0) {
    gw_log("--coap-backend %s: %s", gw->opts.coap_backend, err);
    return -1;
  }
  if (w->index == 0) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (gw_resolve(gw->opts.coap_listen, SOCK_DGRAM, 1, &ss, &len, err,
                   sizeof(err)) != 0) {
      gw_log("--coap-listen %s: %s", gw->opts.coap_listen, err);
      return -1;
    }
    fd = gw_bind_reuseport(SOCK_DGRAM, (struct sockaddr *)&ss, len);
    gw->coap_addr_len = sizeof(gw->coap_addr);
    if (fd >= 0 && getsockname(fd, (struct sockaddr *)&gw->coap_addr,
                               &gw->coap_addr_len) != 0) {
      close(fd);
      fd = -1;
    }
  } else {
    fd = gw_bind_reuseport(SOCK_DGRAM, (struct sockaddr *)&gw->coap_addr,
                           gw->coap_addr_len);
  }
  if (fd < 0) {
    gw_log("cannot listen for coap on %s: %s", gw->opts.coap_listen,
           strerror(errno));
    return -1;
  }
  struct gw_coap_worker *cw = calloc(1, sizeof(*cw));
  gw_coap_opts o = {.base = w->base, .fd = fd, .gw = gw};
  if (cw == NULL || (cw->gc = gw_coap_new(&o, err, sizeof(err))) == NULL) {
    gw_log("%s", cw == NULL ? "coap: out of memory" : err);
    free(cw);
    close(fd);
    return -1;
  }
  w->coap = cw;
  return 0;
}

void gw_coap_worker_stop(gw_worker *w) {
  if (w->coap != NULL)
    gw_coap_shutdown(w->coap->gc);
}

size_t gw_coap_worker_busy(gw_worker *w) {
  return w->coap != NULL ? w->coap->gc->n_exchanges : 0;
}

void gw_coap_worker_keys_changed(gw_worker *w) {
  if (w->coap == NULL)
    return;
  gw_coap *gc = w->coap->gc;
  uint64_t now = now_ms();
  for (size_t b = 0; gc->peers != NULL && b < gc->npeers_buckets; b++) {
    peer *p = gc->peers[b];
    while (p != NULL) {
      peer *next = p->next; /* p may be freed */
      if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_WAITING_KEY) {
        /* The key source answered its request: the handshake goes on, or
         * fails as an unknown identity would. */
        if (m2mpsk_key_request_answered(m2mpsk_assoc_key_request(p->a)) == 1) {
          if (m2mpsk_assoc_resume(p->a, now) != M2MPSK_OK)
            gw_trace("coap peer=%s: resumed handshake failed", p->name);
          (void)peer_process(p); /* sends the next flight, or frees */
        }
      } else if (m2mpsk_assoc_state(p->a) == M2MPSK_STATE_ESTABLISHED &&
          m2mpsk_assoc_handle_timeout(p->a, now) == M2MPSK_E_FAILED) {
        /* Logged here: a failed association no longer names its peer's
         * identity, which peer_process() looks for. */
        gw_log("coap failure peer=%s reason=%s detail=\"%s\"", p->name,
               m2mpsk_reason_name(m2mpsk_assoc_failure(p->a)),
               m2mpsk_assoc_failure_detail(p->a));
        (void)peer_process(p); /* sends the alert, frees */
      }
      p = next;
    }
  }
}

void gw_coap_worker_free(gw_worker *w) {
  if (w->coap == NULL)
    return;
  const gw_coap_stats *st = &w->coap->gc->st;
  gw_trace("coap worker %u: %llu associations, %llu HelloVerifyRequests, "
           "%llu forwarded, %llu refused, %llu timed out, %llu malformed, "
           "%llu dropped",
           w->index, (unsigned long long)st->created,
           (unsigned long long)st->hello_verify,
           (unsigned long long)st->forwarded, (unsigned long long)st->refused,
           (unsigned long long)st->timeouts, (unsigned long long)st->malformed,
           (unsigned long long)st->dropped);
  gw_coap_free(w->coap->gc);
  free(w->coap);
  w->coap = NULL;
}

#endif /* GW_COAP_CODEC_ONLY */
