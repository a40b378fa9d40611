/* The PKCS#11 key source: the keystore's callback queues each request to
 * one thread, the only user of the token's session, which answers it and
 * every poll_ms checks the records it supplied are still there. Token-only
 * records are supplied as token keys (p11_tkey.c), whose master secret is
 * computed on the handshake threads with sessions of their own. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"
#include "p11_internal.h"

typedef struct supplied_rec {
  char *id;
  int token_only;           /* supplied as a token key */
  unsigned long key_object; /* the key object's handle when supplied */
} supplied_rec;

struct m2mpsk_p11_source {
  m2mpsk_keystore *ks;
  p11_tk_shared *sh;     /* owns the token; token keys hold references */
  m2mpsk_p11_token *tok; /* sh's: this thread's session */
  void (*on_change)(void *arg);
  void *arg;
  uint32_t poll_ms;
  size_t max_pending;
  pthread_t thread;
  int started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int stop;
  /* Requests handed over and not yet answered: a ring. */
  m2mpsk_key_request **q;
  size_t q_head, q_len;
  /* KpsaIDs supplied (watched for removal) and token-only ones logged:
   * the thread's own. */
  supplied_rec *supplied;
  size_t n_supplied, cap_supplied;
  char **logged;
  size_t n_logged, cap_logged;
};

/* For the calls whose status changes nothing here (M2MPSK_E_STATE:
 * answered already). */
static void ignore(int rc) {
  (void)rc;
}

static void on_request(void *arg, m2mpsk_key_request *req) {
  m2mpsk_p11_source *s = arg;
  pthread_mutex_lock(&s->mu);
  if (s->stop || s->q_len == s->max_pending) {
    pthread_mutex_unlock(&s->mu);
    /* The keystore bounds open requests by max_pending already; this is
     * the stop race. */
    ignore(m2mpsk_key_request_absent(req));
    m2mpsk_key_request_free(req);
    return;
  }
  s->q[(s->q_head + s->q_len) % s->max_pending] = req;
  s->q_len++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static int list_has(char **l, size_t n, const char *id) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(l[i], id) == 0)
      return 1;
  return 0;
}

/* Adds a copy of id (once); 0 or -1. */
static int list_add(char ***l, size_t *n, size_t *cap, const char *id) {
  if (list_has(*l, *n, id))
    return 0;
  if (*n == *cap) {
    size_t grow = *cap ? *cap * 2 : 16;
    char **g = realloc(*l, grow * sizeof(*g));
    if (g == NULL)
      return -1;
    *l = g;
    *cap = grow;
  }
  if (((*l)[*n] = strdup(id)) == NULL)
    return -1;
  (*n)++;
  return 0;
}

static void list_free(char **l, size_t n) {
  for (size_t i = 0; i < n; i++)
    free(l[i]);
  free(l);
}

/* Watches id (once; the kind and key object of its latest supply); 0 or
 * -1. */
static int watch(m2mpsk_p11_source *s, const m2mpsk_p11_record *r) {
  const char *id = r->kpsa_id;
  for (size_t i = 0; i < s->n_supplied; i++)
    if (strcmp(s->supplied[i].id, id) == 0) {
      s->supplied[i].token_only = r->token_only;
      s->supplied[i].key_object = r->key_object;
      return 0;
    }
  if (s->n_supplied == s->cap_supplied) {
    size_t grow = s->cap_supplied ? s->cap_supplied * 2 : 16;
    supplied_rec *g = realloc(s->supplied, grow * sizeof(*g));
    if (g == NULL)
      return -1;
    s->supplied = g;
    s->cap_supplied = grow;
  }
  if ((s->supplied[s->n_supplied].id = strdup(id)) == NULL)
    return -1;
  s->supplied[s->n_supplied].token_only = r->token_only;
  s->supplied[s->n_supplied++].key_object = r->key_object;
  return 0;
}

/* 1 the first time a reason is to be logged for id (once per KpsaID). */
static int first_time(m2mpsk_p11_source *s, const char *id) {
  if (list_has(s->logged, s->n_logged, id))
    return 0;
  (void)list_add(&s->logged, &s->n_logged, &s->cap_logged, id);
  return 1;
}

/* A token-only record as a token key; 1 when supplied (or a record was
 * there already). */
static int supply_token_key(m2mpsk_p11_source *s, m2mpsk_key_request *req,
                            const m2mpsk_p11_record *r) {
  const char *id = r->kpsa_id, *why = "";
  if (!p11_tk_can_derive(s->sh, &why)) {
    if (first_time(s, id))
      cli_log("keys: pkcs11: %s: token '%s' cannot compute the TLS master "
              "secret inside (%s); token-only keys need a token with "
              "CKM_CONCATENATE_DATA_AND_BASE, e.g. NSS softoken",
              id, s->tok->label, why);
    return 0;
  }
  if (r->key_len == 0) {
    if (first_time(s, id))
      cli_log("keys: pkcs11: %s: the token does not tell the token-only "
              "key's length (CKA_VALUE_LEN)",
              id);
    return 0;
  }
  void *ctx = p11_tk_key_new(s->sh, id);
  if (ctx == NULL) {
    cli_log("keys: pkcs11: %s: out of memory", id);
    return 0;
  }
  int rc = m2mpsk_key_request_supply_token_key(
      req, r->key_len, p11_tk_master_secret, p11_tk_release, ctx,
      r->ida[0] ? r->ida : NULL, r->idb, r->not_before, r->not_after);
  if (rc != M2MPSK_OK)
    p11_tk_release(ctx); /* on every error the caller keeps it */
  if (rc == M2MPSK_OK && watch(s, r) != 0) {
    /* Not watched means not revocable from the token: drop it. */
    ignore(m2mpsk_keystore_remove(s->ks, id));
    return 0;
  }
  if (rc != M2MPSK_OK && rc != M2MPSK_E_DUPLICATE) {
    cli_log("keys: pkcs11: %s: the keystore refused the token key: %s", id,
            m2mpsk_strerror(rc));
    return 0;
  }
  cli_trace("keys: pkcs11: supplied %s (token-only, %zu bytes, master secret "
            "in the token)",
            id, r->key_len);
  return 1;
}

/* Answers one request; 1 when the keystore may have changed. */
static int answer(m2mpsk_p11_source *s, m2mpsk_key_request *req, uint8_t *key) {
  const char *id = m2mpsk_key_request_kpsa_id(req);
  m2mpsk_p11_record r;
  char err[256] = "";
  int rc = m2mpsk_p11_lookup(s->tok, id, &r, key, err, sizeof(err));
  int supplied = 0;
  if (rc == M2MPSK_OK && !r.revoked && r.has_key && !r.token_only &&
      r.key_len > 0) {
    int src =
        m2mpsk_key_request_supply(req, key, r.key_len, r.ida[0] ? r.ida : NULL,
                                  r.idb, r.not_before, r.not_after);
    supplied = src == M2MPSK_OK || src == M2MPSK_E_DUPLICATE;
    if (src == M2MPSK_OK && watch(s, &r) != 0) {
      /* Not watched means not revocable from the token: drop it. */
      ignore(m2mpsk_keystore_remove(s->ks, id));
      supplied = 0;
    }
    if (src != M2MPSK_OK && src != M2MPSK_E_DUPLICATE)
      cli_log("keys: pkcs11: %s: the keystore refused the record: %s", id,
              m2mpsk_strerror(src));
    else
      cli_trace("keys: pkcs11: supplied %s", id);
  } else if (rc == M2MPSK_OK && r.token_only && !r.revoked && r.has_key) {
    supplied = supply_token_key(s, req, &r);
  } else if (rc == M2MPSK_OK) {
    cli_trace("keys: pkcs11: %s is %s", id,
              r.revoked ? "revoked" : "without its key object");
  } else if (rc == M2MPSK_E_NOT_FOUND) {
    cli_trace("keys: pkcs11: no record %s", id);
  } else {
    cli_log("keys: pkcs11: %s skipped: %s", id,
            err[0] ? err : m2mpsk_strerror(rc));
  }
  sodium_memzero(key, M2MPSK_KEY_MAX);
  if (!supplied)
    ignore(m2mpsk_key_request_absent(req));
  m2mpsk_key_request_free(req);
  return 1;
}

/* Removes from the keystore each supplied record the token no longer
 * has, or has revoked; 1 if any went. */
static int rescan(m2mpsk_p11_source *s) {
  int changed = 0;
  size_t j = 0;
  for (size_t i = 0; i < s->n_supplied; i++) {
    char *id = s->supplied[i].id;
    int was_token_only = s->supplied[i].token_only;
    m2mpsk_p11_record r;
    char err[256] = "";
    int rc = m2mpsk_p11_lookup(s->tok, id, &r, NULL, err, sizeof(err));
    const char *why = NULL;
    if (rc == M2MPSK_E_NOT_FOUND)
      why = "deleted";
    else if (rc == M2MPSK_E_PROTOCOL)
      why = "malformed";
    else if (rc == M2MPSK_OK && r.revoked)
      why = "revoked";
    else if (rc == M2MPSK_OK && !r.has_key)
      why = "its key object is gone";
    else if (rc == M2MPSK_OK && r.token_only != was_token_only)
      why = r.token_only ? "now token-only" : "now readable";
    else if (rc == M2MPSK_OK && r.key_object != s->supplied[i].key_object)
      /* Deleted and made again under the same KpsaID: the keystore's
       * copy (or the associations keyed with the old token key) must
       * go; the next handshake asks for the new one. */
      why = "its key object was replaced";
    if (why == NULL) {
      /* Present, or the token did not answer: keep it (an I/O error is
       * logged; the next poll tries again). */
      if (rc != M2MPSK_OK)
        cli_log("keys: pkcs11: rescan of %s: %s", id,
                err[0] ? err : m2mpsk_strerror(rc));
      s->supplied[j++] = s->supplied[i];
      continue;
    }
    int gone = m2mpsk_keystore_remove(s->ks, id);
    cli_log("keys: pkcs11: removed %s (%s)%s", id, why,
            gone == M2MPSK_OK ? "" : ", already gone from the keystore");
    free(id);
    changed = 1;
  }
  s->n_supplied = j;
  return changed;
}

static void deadline_after(struct timespec *ts, uint32_t ms) {
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec++;
    ts->tv_nsec -= 1000000000L;
  }
}

static int past(const struct timespec *ts) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > ts->tv_sec ||
         (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

static void *worker(void *arg) {
  m2mpsk_p11_source *s = arg;
  uint8_t *key = sodium_malloc(M2MPSK_KEY_MAX);
  struct timespec next;
  deadline_after(&next, s->poll_ms);
  pthread_mutex_lock(&s->mu);
  while (!s->stop) {
    if (s->q_len == 0 && !past(&next)) {
      pthread_cond_timedwait(&s->cv, &s->mu, &next);
      continue;
    }
    int changed = 0;
    if (s->q_len > 0) {
      m2mpsk_key_request *req = s->q[s->q_head];
      s->q_head = (s->q_head + 1) % s->max_pending;
      s->q_len--;
      pthread_mutex_unlock(&s->mu);
      if (key == NULL) {
        ignore(m2mpsk_key_request_absent(req));
        m2mpsk_key_request_free(req);
        changed = 1;
      } else {
        changed = answer(s, req, key);
      }
    } else {
      pthread_mutex_unlock(&s->mu);
      changed = rescan(s);
      deadline_after(&next, s->poll_ms);
    }
    if (changed && s->on_change != NULL)
      s->on_change(s->arg);
    pthread_mutex_lock(&s->mu);
  }
  pthread_mutex_unlock(&s->mu);
  if (key != NULL)
    sodium_free(key);
  return NULL;
}

int m2mpsk_p11_source_start(m2mpsk_p11_source **out, m2mpsk_keystore *ks,
                            const char *spec, const uint8_t *pin,
                            size_t pin_len,
                            const m2mpsk_p11_source_options *opts, char *err,
                            size_t err_cap) {
  if (out == NULL || ks == NULL || spec == NULL)
    return M2MPSK_E_INVALID;
  *out = NULL;
  m2mpsk_p11_source *s = calloc(1, sizeof(*s));
  if (s == NULL)
    return M2MPSK_E_NOMEM;
  s->ks = ks;
  s->poll_ms = opts && opts->poll_ms ? opts->poll_ms : 1000;
  s->max_pending = opts && opts->max_pending ? opts->max_pending : 1024;
  s->on_change = opts ? opts->on_change : NULL;
  s->arg = opts ? opts->arg : NULL;
  s->q = calloc(s->max_pending, sizeof(*s->q));
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  if (s->q == NULL) {
    m2mpsk_p11_source_stop(s);
    return M2MPSK_E_NOMEM;
  }
  m2mpsk_p11_token *tok = NULL;
  int rc = m2mpsk_p11_open(&tok, spec, opts ? opts->init_args : NULL, pin,
                           pin_len, err, err_cap);
  if (rc == M2MPSK_OK)
    rc = p11_tk_shared_new(&s->sh, tok); /* owns tok from here */
  if (rc != M2MPSK_OK) {
    m2mpsk_p11_source_stop(s);
    return rc;
  }
  s->tok = tok;
  /* The thread takes no signals: the host's loop does. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int prc = pthread_create(&s->thread, NULL, worker, s);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (prc != 0) {
    snprintf(err, err_cap, "cannot start the PKCS#11 thread: %s",
             strerror(prc));
    m2mpsk_p11_source_stop(s);
    return M2MPSK_E_NOMEM;
  }
  s->started = 1;
  rc = m2mpsk_keystore_set_source(ks, on_request, s, s->max_pending);
  if (rc != M2MPSK_OK) {
    snprintf(err, err_cap, "cannot set the key source: %s",
             m2mpsk_strerror(rc));
    m2mpsk_p11_source_stop(s);
    return rc;
  }
  *out = s;
  return M2MPSK_OK;
}

void m2mpsk_p11_source_stop(m2mpsk_p11_source *s) {
  if (s == NULL)
    return;
  /* No new requests reach on_request after this; those still open in the
   * keystore are answered absent by it. */
  if (s->started)
    ignore(m2mpsk_keystore_set_source(s->ks, NULL, NULL, 0));
  pthread_mutex_lock(&s->mu);
  s->stop = 1;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
  if (s->started)
    pthread_join(s->thread, NULL);
  while (s->q_len > 0) {
    m2mpsk_key_request *req = s->q[s->q_head];
    s->q_head = (s->q_head + 1) % s->max_pending;
    s->q_len--;
    ignore(m2mpsk_key_request_absent(req)); /* E_STATE: answered already */
    m2mpsk_key_request_free(req);
  }
  /* The token closes now, or with the last token key the keystore
   * releases. */
  p11_tk_shared_unref(s->sh);
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  for (size_t i = 0; i < s->n_supplied; i++)
    free(s->supplied[i].id);
  free(s->supplied);
  list_free(s->logged, s->n_logged);
  free(s->q);
  free(s);
}
