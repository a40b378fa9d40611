/* The gateway's one logger. Under a flood every failed handshake or refused
 * request would log a line: a token bucket bounds the rate, and what it
 * drops is counted and reported in one line when tokens are back, so the
 * log volume is bounded whatever the peers do. */
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

#include "gw.h"

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned g_rate; /* lines per second, 0: unthrottled */
static int g_verbose;
static double g_tokens;    /* up to g_rate */
static uint64_t g_last_ms; /* last refill */
static uint64_t g_pending; /* suppressed, not reported yet */
static uint64_t g_total;   /* suppressed in all */

void gw_log_init(unsigned lines_per_s, int verbose) {
  pthread_mutex_lock(&g_lock);
  g_rate = lines_per_s;
  g_verbose = verbose;
  g_tokens = lines_per_s;
  g_last_ms = gw_now_ms();
  pthread_mutex_unlock(&g_lock);
}

/* Writes one whole line with one call, so that threads do not interleave
 * within a line. */
static void emit(const char *prefix, const char *fmt, va_list ap) {
  char line[1100];
  int n = snprintf(line, sizeof(line), "m2mpsk: %s", prefix);
  if (n < 0)
    return;
  int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
  if (m < 0)
    return;
  size_t len = (size_t)n + (size_t)m;
  if (len > sizeof(line) - 2)
    len = sizeof(line) - 2;
  /* Peer-controlled text may sit in a message: one line, printable. */
  for (size_t i = (size_t)n; i < len; i++)
    if ((unsigned char)line[i] < 0x20 || (unsigned char)line[i] == 0x7f)
      line[i] = '?';
  line[len++] = '\n';
  fwrite(line, 1, len, stderr);
  fflush(stderr);
}

static void emit_str(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
static void emit_str(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emit("gateway: ", fmt, ap);
  va_end(ap);
}

/* Takes a token: 1 when the line may go out. Called with g_lock held; on
 * the way it reports what was suppressed (which costs a token too). */
static int take_token(void) {
  if (g_rate == 0)
    return 1;
  uint64_t now = gw_now_ms();
  if (now > g_last_ms) {
    g_tokens += (double)(now - g_last_ms) * g_rate / 1000.0;
    if (g_tokens > g_rate)
      g_tokens = g_rate;
    g_last_ms = now;
  }
  if (g_pending > 0 && g_tokens >= 2) {
    emit_str("%llu log lines suppressed", (unsigned long long)g_pending);
    g_pending = 0;
    g_tokens -= 1;
  }
  if (g_tokens >= 1) {
    g_tokens -= 1;
    return 1;
  }
  g_pending++;
  g_total++;
  return 0;
}

static void vlog(const char *fmt, va_list ap) {
  pthread_mutex_lock(&g_lock);
  if (take_token())
    emit("gateway: ", fmt, ap);
  pthread_mutex_unlock(&g_lock);
}

void gw_log(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

void gw_trace(const char *fmt, ...) {
  if (!g_verbose)
    return;
  va_list ap;
  va_start(ap, fmt);
  vlog(fmt, ap);
  va_end(ap);
}

void gw_notice(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  pthread_mutex_lock(&g_lock);
  if (g_pending > 0) {
    emit_str("%llu log lines suppressed", (unsigned long long)g_pending);
    g_pending = 0;
  }
  emit("gateway ", fmt, ap);
  pthread_mutex_unlock(&g_lock);
  va_end(ap);
}

uint64_t gw_log_suppressed(void) {
  pthread_mutex_lock(&g_lock);
  uint64_t n = g_total;
  pthread_mutex_unlock(&g_lock);
  return n;
}

void gw_log_flush(void) {
  pthread_mutex_lock(&g_lock);
  if (g_pending > 0 && g_rate > 0) {
    uint64_t now = gw_now_ms();
    if (now > g_last_ms) {
      g_tokens += (double)(now - g_last_ms) * g_rate / 1000.0;
      if (g_tokens > g_rate)
        g_tokens = g_rate;
      g_last_ms = now;
    }
    if (g_tokens >= 1) {
      emit_str("%llu log lines suppressed", (unsigned long long)g_pending);
      g_pending = 0;
      g_tokens -= 1;
    }
  }
  pthread_mutex_unlock(&g_lock);
}
