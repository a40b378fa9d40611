/*
 * test_token_prf (issue 20, "prove it or refute it"): an OpenSSL 3.0 TLS 1.2 /
 * DTLS 1.2 PSK handshake whose side under test never holds Kpsa.  The PSK
 * callback returns a random one-handshake handle; the in-process provider
 * "prfhsm" (prfprov.c) sees the handle at the end of the RFC 4279 premaster
 * and computes the master secret inside a PKCS#11 token (NSS softoken:
 * CKM_CONCATENATE_DATA_AND_BASE, then P_SHA256/384 with C_Sign HMAC).
 *
 *   a. matrix, in process, NSS softoken: 5 suites x TLS/DTLS x EMS on/off x
 *      our role client/server; one token master secret per handshake, no
 *      handle-bearing secret ever reaches the default PRF, data round-trips.
 *   b. control: the same handle with the default PRF fails the handshake.
 *   c. SoftHSM2 refuses the derivation; the handshake fails closed.
 *   d. out of process: the token (NSS softoken) in a process of its own,
 *      Kpsa provisioned by another process, the peer holding Kpsa another
 *      process again; then this process scans its own memory for Kpsa.
 *   e. rates (printed, not asserted).
 *
 * Exit 0 pass, 1 fail, 77 skip (no NSS softoken).
 * Internal modes (run as separate processes by the test itself):
 *   --provision DIR LABEL     put Kpsa (TEST_KEY_A ^ TEST_KEY_B) in DIR's NSS
 *                             database and write its hex to DIR/kpsa.hex
 *   --token-server FD DIR LABEL   answer PRF requests on FD (NSS in DIR)
 *   --peer FD dtls server SUITE KEYHEXFILE   one handshake with Kpsa in memory
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/provider.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>

#include "p11tok.h"
#include "prfprov.h"

#define NSS_MODULE "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"
#define SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#define PIN "1234"
#define IDENTITY "token-prf-client"
#define NSS_TOKEN_SLOT 1 /* index: slot 2, "NSS User Private Key and Certificate Services" */

/* Kpsa of part d is TEST_KEY_A ^ TEST_KEY_B: it is never whole in this
 * binary's image, and this process never computes it (the scan compares
 * byte by byte). */
static const unsigned char TEST_KEY_A[32] = {
    0x5a, 0x13, 0xc4, 0x7e, 0x91, 0x02, 0xbb, 0x38, 0x6d, 0xe0, 0x24, 0x8f, 0x1c, 0x73, 0xa9, 0x56,
    0x0b, 0xd2, 0x47, 0x99, 0xe5, 0x3a, 0x60, 0xfc, 0x81, 0x2e, 0x17, 0xc8, 0x5b, 0x94, 0x3d, 0xa6
};
static const unsigned char TEST_KEY_B[32] = {
    0x66, 0x0f, 0x4e, 0x2b, 0xd3, 0x71, 0x88, 0xa4, 0x19, 0x5c, 0xe7, 0x03, 0xb2, 0x4d, 0x90, 0x6e,
    0xc1, 0x37, 0xfa, 0x08, 0x64, 0x9d, 0x22, 0xb5, 0x4f, 0xe3, 0x7a, 0x11, 0xd8, 0x26, 0xac, 0x59
};

static char g_tmp[64];
static pid_t g_children[8];
static int g_nchildren;
static int g_failures;
static OSSL_LIB_CTX *g_lib;
static int g_exidx = -1;

/* The in-process peer's Kpsa (parts a to c, e; random per run). */
static unsigned char g_peer_psk[32];

/* The token our side uses for the current SSL_CTX (SSL_CTX ex_data would do
 * too; one at a time here). */
static struct prf_token *g_tok;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                            \
            printf(__VA_ARGS__);                                                                   \
            printf("\n");                                                                          \
            g_failures++;                                                                          \
        }                                                                                          \
    } while (0)

static void cleanup(void)
{
    int i;
    for (i = 0; i < g_nchildren; i++)
        if (g_children[i] > 0) {
            kill(g_children[i], SIGKILL);
            waitpid(g_children[i], NULL, 0);
        }
    g_nchildren = 0;
    if (g_tmp[0] != 0) {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", g_tmp);
        g_tmp[0] = 0;
    }
}

/* timeout(1) and Ctrl-C: children killed and the directory removed too. */
static void on_signal(int sig)
{
    (void)sig;
    exit(1);
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* ---- the token in this process ---------------------------------------- */

struct local_tok {
    struct p11tok *t;
    CK_OBJECT_HANDLE kpsa;
};

static unsigned long local_prf(void *ctx, const uint8_t *prefix, size_t plen, int sha384,
                               const uint8_t *seed, size_t slen, uint8_t *out, size_t olen)
{
    struct local_tok *l = ctx;
    return p11tok_psk_prf(l->t, l->kpsa, prefix, plen, sha384, seed, slen, out, olen);
}

static void nss_params(char *buf, size_t n, const char *dir)
{
    snprintf(buf, n, "configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=",
             dir);
}

/* ---- the token in another process (part d) ----------------------------- */

struct remote_req {
    uint32_t plen, slen, olen, sha384;
};

static int read_full(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

static int write_full(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t r = write(fd, p, n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        p += r;
        n -= (size_t)r;
    }
    return 1;
}

static unsigned long remote_prf(void *ctx, const uint8_t *prefix, size_t plen, int sha384,
                                const uint8_t *seed, size_t slen, uint8_t *out, size_t olen)
{
    int fd = *(int *)ctx;
    struct remote_req q = { (uint32_t)plen, (uint32_t)slen, (uint32_t)olen, (uint32_t)sha384 };
    uint32_t rv = CKR_DEVICE_ERROR;
    if (plen > 1024 || slen > 1024 || olen > 1024)
        return CKR_ARGUMENTS_BAD;
    if (!write_full(fd, &q, sizeof q) || !write_full(fd, prefix, plen)
        || !write_full(fd, seed, slen) || !read_full(fd, &rv, sizeof rv))
        return CKR_DEVICE_ERROR;
    if (rv == CKR_OK && !read_full(fd, out, olen))
        return CKR_DEVICE_ERROR;
    return rv;
}

static int token_server(int fd, const char *dir, const char *label)
{
    struct p11tok t;
    char params[512];
    CK_OBJECT_HANDLE kpsa;
    size_t klen = 0;
    uint32_t l32;
    CK_RV rv;

    nss_params(params, sizeof params, dir);
    if ((rv = p11tok_open(&t, NSS_MODULE, params, NSS_TOKEN_SLOT, PIN, 0)) != CKR_OK
        || (rv = p11tok_find(&t, label, &kpsa, &klen)) != CKR_OK) {
        fprintf(stderr, "token-server: %s\n", p11tok_rv(rv));
        return 1;
    }
    l32 = (uint32_t)klen;
    if (!write_full(fd, &l32, sizeof l32))
        return 1;
    for (;;) {
        struct remote_req q;
        uint8_t prefix[1024], seed[1024], out[1024];
        uint32_t r;
        if (!read_full(fd, &q, sizeof q))
            break;
        if (q.plen > sizeof prefix || q.slen > sizeof seed || q.olen > sizeof out
            || !read_full(fd, prefix, q.plen) || !read_full(fd, seed, q.slen))
            break;
        r = (uint32_t)p11tok_psk_prf(&t, kpsa, prefix, q.plen, (int)q.sha384, seed, q.slen, out,
                                     q.olen);
        if (!write_full(fd, &r, sizeof r) || (r == CKR_OK && !write_full(fd, out, q.olen)))
            break;
    }
    p11tok_close(&t);
    return 0;
}

static int provision(const char *dir, const char *label)
{
    struct p11tok t;
    char params[512], path[256], hex[65];
    unsigned char key[32];
    CK_RV rv;
    FILE *f;
    int i;

    for (i = 0; i < 32; i++) {
        key[i] = TEST_KEY_A[i] ^ TEST_KEY_B[i];
        snprintf(hex + 2 * i, 3, "%02x", key[i]);
    }
    nss_params(params, sizeof params, dir);
    rv = p11tok_open(&t, NSS_MODULE, params, NSS_TOKEN_SLOT, PIN, 1);
    if (rv == CKR_OK)
        rv = p11tok_import(&t, label, key, sizeof key);
    p11tok_close(&t);
    OPENSSL_cleanse(key, sizeof key);
    if (rv != CKR_OK) {
        fprintf(stderr, "provision: %s\n", p11tok_rv(rv));
        return 1;
    }
    snprintf(path, sizeof path, "%s/kpsa.hex", dir);
    if ((f = fopen(path, "w")) == NULL)
        return 1;
    fprintf(f, "%s", hex);
    fclose(f);
    return 0;
}

/* ---- TLS ---------------------------------------------------------------- */

struct hrec {
    unsigned char h[PRFPROV_MAX_PSK];
    size_t len;
};

static void ex_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
    struct hrec *r = ptr;
    (void)parent;
    (void)ad;
    (void)idx;
    (void)argl;
    (void)argp;
    if (r != NULL) {
        prfprov_handle_release(r->h, r->len);
        OPENSSL_clear_free(r, sizeof *r);
    }
}

static unsigned int issue_handle(SSL *s, const char *identity, unsigned char *psk,
                                 unsigned int max)
{
    struct hrec *r;
    if (g_tok == NULL || strcmp(identity, IDENTITY) != 0 || g_tok->klen > max)
        return 0;
    if ((r = OPENSSL_zalloc(sizeof *r)) == NULL)
        return 0;
    if (!prfprov_handle_new(g_tok, r->h)) {
        OPENSSL_free(r);
        return 0;
    }
    r->len = g_tok->klen;
    ex_free(NULL, SSL_get_ex_data(s, g_exidx), NULL, 0, 0, NULL);
    SSL_set_ex_data(s, g_exidx, r);
    memcpy(psk, r->h, r->len);
    return (unsigned int)r->len;
}

static unsigned int tok_client_cb(SSL *s, const char *hint, char *id, unsigned int maxid,
                                  unsigned char *psk, unsigned int maxpsk)
{
    (void)hint;
    snprintf(id, maxid, "%s", IDENTITY);
    return issue_handle(s, IDENTITY, psk, maxpsk);
}

static unsigned int tok_server_cb(SSL *s, const char *id, unsigned char *psk, unsigned int maxpsk)
{
    return issue_handle(s, id, psk, maxpsk);
}

static unsigned char *g_mem_psk = g_peer_psk;
static size_t g_mem_psklen = sizeof g_peer_psk;

static unsigned int mem_client_cb(SSL *s, const char *hint, char *id, unsigned int maxid,
                                  unsigned char *psk, unsigned int maxpsk)
{
    (void)s;
    (void)hint;
    snprintf(id, maxid, "%s", IDENTITY);
    if (g_mem_psklen > maxpsk)
        return 0;
    memcpy(psk, g_mem_psk, g_mem_psklen);
    return (unsigned int)g_mem_psklen;
}

static unsigned int mem_server_cb(SSL *s, const char *id, unsigned char *psk, unsigned int maxpsk)
{
    (void)s;
    if (strcmp(id, IDENTITY) != 0 || g_mem_psklen > maxpsk)
        return 0;
    memcpy(psk, g_mem_psk, g_mem_psklen);
    return (unsigned int)g_mem_psklen;
}

enum prf_mode { PRF_MEMORY, PRF_TOKEN, PRF_FORCED_DEFAULT };

static SSL_CTX *make_ctx(int dtls, int server, const char *suite, int noems, enum prf_mode mode)
{
    const SSL_METHOD *m = dtls ? DTLS_method() : TLS_method();
    int v = dtls ? DTLS1_2_VERSION : TLS1_2_VERSION;
    SSL_CTX *c = mode == PRF_TOKEN            ? SSL_CTX_new_ex(g_lib, "?provider=" PRFPROV_NAME, m)
                 : mode == PRF_FORCED_DEFAULT ? SSL_CTX_new_ex(g_lib, "provider=default", m)
                                              : SSL_CTX_new(m);
    if (c == NULL)
        return NULL;
    /* TLS 1.3 would hand the callback's bytes to HKDF: cap at 1.2 */
    if (!SSL_CTX_set_min_proto_version(c, v) || !SSL_CTX_set_max_proto_version(c, v)
        || !SSL_CTX_set_cipher_list(c, suite)) {
        SSL_CTX_free(c);
        return NULL;
    }
    if (noems)
        SSL_CTX_set_options(c, SSL_OP_NO_EXTENDED_MASTER_SECRET);
    SSL_CTX_set_options(c, SSL_OP_NO_TICKET);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    if (server) {
        SSL_CTX_set_psk_server_callback(c, mode == PRF_MEMORY ? mem_server_cb : tok_server_cb);
        SSL_CTX_set_dh_auto(c, 1);
    } else {
        SSL_CTX_set_psk_client_callback(c, mode == PRF_MEMORY ? mem_client_cb : tok_client_cb);
    }
    return c;
}

static int udp_pair(int fd[2])
{
    struct sockaddr_in a[2];
    socklen_t l = sizeof a[0];
    int i;
    fd[0] = fd[1] = -1;
    for (i = 0; i < 2; i++) {
        if ((fd[i] = socket(AF_INET, SOCK_DGRAM, 0)) < 0)
            return 0;
        memset(&a[i], 0, sizeof a[i]);
        a[i].sin_family = AF_INET;
        a[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd[i], (struct sockaddr *)&a[i], sizeof a[i]) != 0
            || getsockname(fd[i], (struct sockaddr *)&a[i], &l) != 0)
            return 0;
    }
    for (i = 0; i < 2; i++)
        if (connect(fd[i], (struct sockaddr *)&a[1 - i], sizeof a[0]) != 0)
            return 0;
    return 1;
}

static BIO *dgram_bio(int fd)
{
    struct sockaddr_in pa;
    socklen_t l = sizeof pa;
    BIO *b = BIO_new_dgram(fd, BIO_CLOSE);
    BIO_ADDR *ba = BIO_ADDR_new();
    if (b != NULL && ba != NULL && getpeername(fd, (struct sockaddr *)&pa, &l) == 0
        && BIO_ADDR_rawmake(ba, AF_INET, &pa.sin_addr, sizeof pa.sin_addr, pa.sin_port))
        BIO_ctrl_set_connected(b, ba);
    BIO_ADDR_free(ba);
    return b;
}

static int step(SSL *s, int *done)
{
    int r, e;
    if (*done)
        return 1;
    r = SSL_do_handshake(s);
    if (r == 1) {
        *done = 1;
        return 1;
    }
    e = SSL_get_error(s, r);
    return e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE;
}

static int xfer(SSL *w, SSL *r, const char *msg)
{
    char buf[128];
    int n = -1, i;
    if (SSL_write(w, msg, (int)strlen(msg)) <= 0)
        return 0;
    for (i = 0; i < 1000 && n <= 0; i++)
        n = SSL_read(r, buf, sizeof buf);
    return n == (int)strlen(msg) && memcmp(buf, msg, (size_t)n) == 0;
}

/* One in-process handshake (TLS over a BIO pair, DTLS over non-blocking
 * loopback UDP); *ems: extended master secret used. */
static int handshake(SSL_CTX *cc, SSL_CTX *sc, int dtls, int *ems, int data)
{
    SSL *c = SSL_new(cc), *s = SSL_new(sc);
    int ok = 0, dc = 0, ds = 0, i;
    if (c == NULL || s == NULL)
        goto end;
    if (dtls) {
        int fd[2];
        BIO *bc, *bs;
        if (!udp_pair(fd)) {
            if (fd[0] >= 0)
                close(fd[0]);
            if (fd[1] >= 0)
                close(fd[1]);
            goto end;
        }
        fcntl(fd[0], F_SETFL, O_NONBLOCK);
        fcntl(fd[1], F_SETFL, O_NONBLOCK);
        bc = dgram_bio(fd[0]);
        bs = dgram_bio(fd[1]);
        SSL_set_bio(c, bc, bc);
        SSL_set_bio(s, bs, bs);
    } else {
        BIO *bc, *bs;
        if (!BIO_new_bio_pair(&bc, 0, &bs, 0))
            goto end;
        SSL_set_bio(c, bc, bc);
        SSL_set_bio(s, bs, bs);
    }
    SSL_set_connect_state(c);
    SSL_set_accept_state(s);
    for (i = 0; i < 1000 && !(dc && ds); i++)
        if (!step(c, &dc) || !step(s, &ds))
            break;
    if (!(dc && ds))
        goto end;
    if (ems != NULL)
        *ems = (int)SSL_get_extms_support(c);
    ok = !data || (xfer(c, s, "ping-client-to-server") && xfer(s, c, "pong-server-to-client"));
end:
    ERR_clear_error();
    SSL_free(c);
    SSL_free(s);
    return ok;
}

static const char *const SUITES[] = { "PSK-AES128-CBC-SHA256", "PSK-AES128-CCM8",
                                      "ECDHE-PSK-AES128-CBC-SHA256", "DHE-PSK-AES128-CBC-SHA256",
                                      "PSK-AES256-GCM-SHA384" };
#define NSUITES (sizeof SUITES / sizeof SUITES[0])

/* a: the matrix with the token in this process. */
static int run_matrix(const char *what)
{
    int pass = 0, total = 0, dtls, noems, srv;
    size_t si;
    for (dtls = 0; dtls < 2; dtls++)
        for (si = 0; si < NSUITES; si++)
            for (noems = 0; noems < 2; noems++)
                for (srv = 0; srv < 2; srv++) {
                    SSL_CTX *ours = make_ctx(dtls, srv, SUITES[si], noems, PRF_TOKEN);
                    SSL_CTX *peer = make_ctx(dtls, !srv, SUITES[si], 0, PRF_MEMORY);
                    struct prfprov_stats a, b;
                    int ems = -1, ok;
                    prfprov_stats(&a);
                    ok = ours != NULL && peer != NULL
                         && (srv ? handshake(peer, ours, dtls, &ems, 1)
                                 : handshake(ours, peer, dtls, &ems, 1));
                    prfprov_stats(&b);
                    total++;
                    CHECK(ok, "%s %s %s EMS %s our %s: handshake or data failed", what,
                          dtls ? "DTLS1.2" : "TLS1.2", SUITES[si], noems ? "off" : "on",
                          srv ? "server" : "client");
                    CHECK(b.token_ms - a.token_ms == 1, "%s %s %s: %lu master secrets in the token",
                          what, dtls ? "DTLS1.2" : "TLS1.2", SUITES[si], b.token_ms - a.token_ms);
                    CHECK(b.delegated_handle == a.delegated_handle,
                          "%s: a handle-bearing secret reached the default PRF", what);
                    CHECK(ems == !noems, "%s: EMS used %d, requested %d", what, ems, !noems);
                    if (ok && b.token_ms - a.token_ms == 1 && b.delegated_handle == a.delegated_handle
                        && ems == !noems)
                        pass++;
                    SSL_CTX_free(ours);
                    SSL_CTX_free(peer);
                }
    printf("%s: %d/%d handshakes passed (token MS = 1, no handle to the default PRF, data both "
           "ways)\n",
           what, pass, total);
    return pass == total;
}

/* b: the same handle callbacks with the default PRF must not interoperate. */
static void run_control(void)
{
    int dtls, srv, failed = 0;
    for (dtls = 0; dtls < 2; dtls++)
        for (srv = 0; srv < 2; srv++) {
            SSL_CTX *ours = make_ctx(dtls, srv, SUITES[0], 0, PRF_FORCED_DEFAULT);
            SSL_CTX *peer = make_ctx(dtls, !srv, SUITES[0], 0, PRF_MEMORY);
            struct prfprov_stats a, b;
            int ok;
            prfprov_stats(&a);
            ok = ours != NULL && peer != NULL
                 && (srv ? handshake(peer, ours, dtls, NULL, 1) : handshake(ours, peer, dtls, NULL, 1));
            prfprov_stats(&b);
            CHECK(ours != NULL && peer != NULL, "control: no SSL_CTX");
            CHECK(!ok, "control %s our %s: the handshake succeeded with the default PRF",
                  dtls ? "DTLS1.2" : "TLS1.2", srv ? "server" : "client");
            CHECK(b.token_ms == a.token_ms, "control: the token was used");
            failed += !ok;
            SSL_CTX_free(ours);
            SSL_CTX_free(peer);
        }
    printf("b. control (propq \"provider=default\", same handles): %d/4 handshakes failed, as "
           "expected\n",
           failed);
}

static int run_cmd(char *const argv[], char *const envp[])
{
    pid_t pid = fork();
    int st;
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0)
            dup2(devnull, 1);
        if (envp != NULL)
            execve(argv[0], argv, envp);
        else
            execv(argv[0], argv);
        _exit(127);
    }
    if (waitpid(pid, &st, 0) != pid)
        return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* c: SoftHSM2 has no mechanism for prefix || Kpsa. */
static void run_softhsm(void)
{
    char dir[128], conf[160], confenv[192], line[256];
    struct p11tok t;
    struct local_tok lt;
    struct prf_token tok;
    CK_OBJECT_HANDLE obj;
    uint8_t prefix[36] = { 0 }, seed[64] = { 0 }, out[48];
    FILE *f;
    CK_RV rv;
    size_t klen = 0;

    if (access(SOFTHSM_MODULE, R_OK) != 0 || access("/usr/bin/softhsm2-util", X_OK) != 0) {
        printf("c. SoftHSM2: skipped (no %s or softhsm2-util)\n", SOFTHSM_MODULE);
        return;
    }
    snprintf(dir, sizeof dir, "%s/softhsm", g_tmp);
    snprintf(conf, sizeof conf, "%s/softhsm2.conf", dir);
    if (mkdir(dir, 0700) != 0 || (snprintf(line, sizeof line, "%s/tokens", dir), mkdir(line, 0700)) != 0
        || (f = fopen(conf, "w")) == NULL) {
        CHECK(0, "SoftHSM2 directory");
        return;
    }
    fprintf(f, "directories.tokendir = %s/tokens\nobjectstore.backend = file\n", dir);
    fclose(f);
    snprintf(confenv, sizeof confenv, "SOFTHSM2_CONF=%s", conf);
    {
        char *argv[] = { (char *)(uintptr_t) "/usr/bin/softhsm2-util", (char *)(uintptr_t) "--init-token",
                         (char *)(uintptr_t) "--free", (char *)(uintptr_t) "--label",
                         (char *)(uintptr_t) "prf", (char *)(uintptr_t) "--so-pin",
                         (char *)(uintptr_t) "5678", (char *)(uintptr_t) "--pin",
                         (char *)(uintptr_t)PIN, NULL };
        char *envp[] = { confenv, NULL };
        CHECK(run_cmd(argv, envp) == 0, "softhsm2-util --init-token failed");
    }
    setenv("SOFTHSM2_CONF", conf, 1);
    rv = p11tok_open(&t, SOFTHSM_MODULE, NULL, 0, PIN, 0);
    CHECK(rv == CKR_OK, "SoftHSM2 open: %s", p11tok_rv(rv));
    if (rv != CKR_OK) {
        p11tok_close(&t);
        return;
    }
    rv = p11tok_import(&t, IDENTITY, g_peer_psk, sizeof g_peer_psk);
    CHECK(rv == CKR_OK, "SoftHSM2 import: %s", p11tok_rv(rv));
    rv = p11tok_find(&t, IDENTITY, &obj, &klen);
    CHECK(rv == CKR_OK, "SoftHSM2 find: %s", p11tok_rv(rv));
    prefix[1] = 32;
    prefix[35] = 32;
    rv = p11tok_psk_prf(&t, obj, prefix, sizeof prefix, 0, seed, sizeof seed, out, sizeof out);
    CHECK(rv == CKR_MECHANISM_INVALID, "SoftHSM2 C_DeriveKey(CONCATENATE_DATA_AND_BASE): %s",
          p11tok_rv(rv));
    printf("c. SoftHSM2 C_DeriveKey(CKM_CONCATENATE_DATA_AND_BASE): %s\n", p11tok_rv(rv));
    lt.t = &t;
    lt.kpsa = obj;
    tok.prf = local_prf;
    tok.ctx = &lt;
    tok.klen = sizeof g_peer_psk; /* SoftHSM2 may leave CKA_VALUE_LEN 0 */
    g_tok = &tok;
    {
        int srv, dtls, failed = 0;
        for (dtls = 0; dtls < 2; dtls++)
            for (srv = 0; srv < 2; srv++) {
                SSL_CTX *ours = make_ctx(dtls, srv, SUITES[0], 0, PRF_TOKEN);
                SSL_CTX *peer = make_ctx(dtls, !srv, SUITES[0], 0, PRF_MEMORY);
                struct prfprov_stats a, b;
                int ok;
                prfprov_stats(&a);
                ok = srv ? handshake(peer, ours, dtls, NULL, 1) : handshake(ours, peer, dtls, NULL, 1);
                prfprov_stats(&b);
                CHECK(!ok, "SoftHSM2: handshake succeeded");
                CHECK(b.token_fail - a.token_fail == 1, "SoftHSM2: %lu token refusals",
                      b.token_fail - a.token_fail);
                CHECK(b.delegated_handle == a.delegated_handle,
                      "SoftHSM2: the handle reached the default PRF");
                CHECK(tok.last_rv == CKR_MECHANISM_INVALID, "SoftHSM2: %s", p11tok_rv(tok.last_rv));
                failed += !ok && b.token_fail - a.token_fail == 1 && b.delegated_handle == a.delegated_handle;
                SSL_CTX_free(ours);
                SSL_CTX_free(peer);
            }
        printf("c. SoftHSM2: %d/4 handshakes failed closed (token refused, no handle to the "
               "default PRF)\n",
               failed);
    }
    g_tok = NULL;
    p11tok_close(&t);
    unsetenv("SOFTHSM2_CONF");
}

/* e: rates, PSK-AES128-CBC-SHA256 over TLS 1.2, one run. */
static void run_rates(struct prf_token *tok, double secs)
{
    int srv, mode;
    g_tok = tok;
    for (srv = 0; srv < 2; srv++)
        for (mode = 1; mode >= 0; mode--) {
            SSL_CTX *ours = make_ctx(0, srv, SUITES[0], 0, mode ? PRF_TOKEN : PRF_MEMORY);
            SSL_CTX *peer = make_ctx(0, !srv, SUITES[0], 0, PRF_MEMORY);
            long n = 0, bad = 0;
            double t0 = now(), t;
            while ((t = now()) - t0 < secs) {
                bad += !(srv ? handshake(peer, ours, 0, NULL, 0) : handshake(ours, peer, 0, NULL, 0));
                n++;
            }
            printf("e. rate: our %s, %s: %.0f handshakes/s (%ld in %.2f s%s)\n",
                   srv ? "server" : "client", mode ? "token PRF (NSS softoken)" : "PSK in memory",
                   (double)n / (t - t0), n, t - t0, bad ? ", FAILURES" : "");
            SSL_CTX_free(ours);
            SSL_CTX_free(peer);
        }
    g_tok = NULL;
}

/* ---- part d: everything holding Kpsa is another process ----------------- */

static pid_t spawn(char *const argv[], int keep_fd)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd;
        for (fd = 3; fd < 1024; fd++)
            if (fd != keep_fd)
                close(fd);
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid > 0 && g_nchildren < (int)(sizeof g_children / sizeof g_children[0]))
        g_children[g_nchildren++] = pid;
    return pid;
}

static int reap(pid_t pid, double timeout)
{
    double t0 = now();
    int st, i;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (now() - t0 > timeout) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            break;
        }
        usleep(2000);
    }
    for (i = 0; i < g_nchildren; i++)
        if (g_children[i] == pid)
            g_children[i] = g_children[--g_nchildren];
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* "ping" from the client, "pong" from the server, over an established SSL. */
static int ping_pong(SSL *s, int server)
{
    char buf[64];
    int n;

    if (server) {
        n = SSL_read(s, buf, sizeof buf);
        return n == 4 && memcmp(buf, "ping", 4) == 0 && SSL_write(s, "pong", 4) == 4;
    }
    if (SSL_write(s, "ping", 4) != 4)
        return 0;
    n = SSL_read(s, buf, sizeof buf);
    return n == 4 && memcmp(buf, "pong", 4) == 0;
}

/* The peer process: Kpsa from the hex file, one handshake on fd, data. */
static int peer_main(int fd, int dtls, int server, const char *suite, const char *keyfile)
{
    char hex[80] = { 0 };
    long klen = 0;
    unsigned char *key;
    FILE *f = fopen(keyfile, "r");
    SSL_CTX *c;
    SSL *s;
    BIO *b;
    int ok = 0;

    if (f == NULL || fgets(hex, sizeof hex, f) == NULL)
        return 2;
    fclose(f);
    if ((key = OPENSSL_hexstr2buf(hex, &klen)) == NULL)
        return 2;
    g_mem_psk = key;
    g_mem_psklen = (size_t)klen;
    if ((c = make_ctx(dtls, server, suite, 0, PRF_MEMORY)) == NULL)
        return 2;
    s = SSL_new(c);
    b = dtls ? dgram_bio(fd) : BIO_new_socket(fd, BIO_CLOSE);
    SSL_set_bio(s, b, b);
    ok = (server ? SSL_accept(s) : SSL_connect(s)) == 1 && ping_pong(s, server);
    SSL_free(s);
    SSL_CTX_free(c);
    OPENSSL_clear_free(key, (size_t)klen);
    return ok ? 0 : 1;
}

/* Our side of one part-d handshake, blocking on fd. */
static int our_side(int fd, int dtls, int server, const char *suite, int noems, int *ems)
{
    SSL_CTX *c = make_ctx(dtls, server, suite, noems, PRF_TOKEN);
    SSL *s;
    BIO *b;
    int ok = 0;
    struct timeval tv = { 10, 0 };

    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (c == NULL) {
        close(fd);
        return 0;
    }
    s = SSL_new(c);
    b = dtls ? dgram_bio(fd) : BIO_new_socket(fd, BIO_CLOSE);
    SSL_set_bio(s, b, b);
    if ((server ? SSL_accept(s) : SSL_connect(s)) == 1) {
        *ems = (int)SSL_get_extms_support(s);
        ok = ping_pong(s, server);
    }
    ERR_clear_error();
    SSL_free(s);
    SSL_CTX_free(c);
    return ok;
}

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_ASAN 1
#endif
#endif

#ifdef UNDER_ASAN
/* ASan's shadow memory on x86_64 (16 TiB, rw, mostly unbacked) holds
 * metadata, not the program's bytes: not scanned. */
static int asan_shadow(unsigned long lo, unsigned long hi)
{
    return lo >= 0x00007fff8000UL && hi <= 0x10007fff8000UL;
}

#else
static int asan_shadow(unsigned long lo, unsigned long hi)
{
    (void)lo;
    (void)hi;
    return 0;
}
#endif

/* Readable memory of this process: hits of Kpsa = A ^ B (compared byte by
 * byte, never assembled) and of a marker on the heap. */
static void scan_self(const unsigned char *marker, size_t mlen, long *key_hits, long *marker_hits,
                      long *bytes)
{
    FILE *maps = fopen("/proc/self/maps", "r");
    int mem = open("/proc/self/mem", O_RDONLY);
    char line[512];
    size_t cap = 1 << 20;
    unsigned char *buf = malloc(cap + 64);

    *key_hits = *marker_hits = *bytes = 0;
    if (maps == NULL || mem < 0 || buf == NULL) {
        *key_hits = -1;
        goto end;
    }
    while (fgets(line, sizeof line, maps) != NULL) {
        unsigned long lo, hi, off;
        char perms[8];
        if (sscanf(line, "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r'
            || strstr(line, "[vvar]") != NULL || strstr(line, "[vsyscall]") != NULL
            || asan_shadow(lo, hi))
            continue;
        for (off = lo; off < hi; off += cap) {
            size_t n = hi - off < cap ? hi - off : cap, i, j;
            ssize_t r = pread(mem, buf, n + (off + n < hi ? 31 : 0), (off_t)off);
            if (r <= 0)
                break;
            *bytes += r;
            for (i = 0; i + 32 <= (size_t)r; i++) {
                if (buf[i] == (TEST_KEY_A[0] ^ TEST_KEY_B[0])) {
                    for (j = 1; j < 32 && buf[i + j] == (TEST_KEY_A[j] ^ TEST_KEY_B[j]); j++)
                        ;
                    *key_hits += j == 32;
                }
                if (buf[i] == marker[0] && memcmp(buf + i, marker, mlen) == 0
                    && buf + i != marker)
                    ++*marker_hits;
            }
        }
    }
end:
    free(buf);
    if (maps != NULL)
        fclose(maps);
    if (mem >= 0)
        close(mem);
}

static void run_out_of_process(const char *self)
{
    char dir[128], label[] = IDENTITY, keyfile[160], fdarg[16];
    int sv[2], rc, tokfd, pass = 0, total = 0, dtls, noems, srv;
    uint32_t klen = 0;
    pid_t tp;
    size_t si;
    struct prf_token tok;
    unsigned char *marker;
    long key_hits, marker_hits, bytes;

    snprintf(dir, sizeof dir, "%s/nss-d", g_tmp);
    snprintf(keyfile, sizeof keyfile, "%s/kpsa.hex", dir);
    if (mkdir(dir, 0700) != 0) {
        CHECK(0, "mkdir %s", dir);
        return;
    }
    {
        char *argv[] = { (char *)(uintptr_t)self, (char *)(uintptr_t) "--provision", dir, label, NULL };
        rc = run_cmd(argv, NULL);
        CHECK(rc == 0, "d. provisioning process exited %d", rc);
        if (rc != 0)
            return;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return;
    snprintf(fdarg, sizeof fdarg, "%d", sv[1]);
    {
        char *argv[] = { (char *)(uintptr_t)self, (char *)(uintptr_t) "--token-server", fdarg, dir,
                         label, NULL };
        tp = spawn(argv, sv[1]);
    }
    close(sv[1]);
    tokfd = sv[0];
    if (tp < 0 || !read_full(tokfd, &klen, sizeof klen) || klen != 32) {
        CHECK(0, "d. token process did not start (klen %u)", (unsigned)klen);
        close(tokfd);
        return;
    }
    tok.prf = remote_prf;
    tok.ctx = &tokfd;
    tok.klen = klen;
    g_tok = &tok;
    for (dtls = 0; dtls < 2; dtls++)
        for (si = 0; si < NSUITES; si++)
            for (noems = 0; noems < 2; noems++)
                for (srv = 0; srv < 2; srv++) {
                    int fd[2], ok, ems = -1, prc;
                    pid_t pp;
                    struct prfprov_stats a, b;
                    char pfd[16];
                    if (dtls ? !udp_pair(fd) : socketpair(AF_UNIX, SOCK_STREAM, 0, fd) != 0) {
                        CHECK(0, "d. sockets");
                        continue;
                    }
                    snprintf(pfd, sizeof pfd, "%d", fd[1]);
                    {
                        char *argv[] = { (char *)(uintptr_t)self, (char *)(uintptr_t) "--peer", pfd,
                                         (char *)(uintptr_t)(dtls ? "1" : "0"),
                                         (char *)(uintptr_t)(srv ? "0" : "1"),
                                         (char *)(uintptr_t)SUITES[si], keyfile, NULL };
                        pp = spawn(argv, fd[1]);
                    }
                    close(fd[1]);
                    prfprov_stats(&a);
                    ok = our_side(fd[0], dtls, srv, SUITES[si], noems, &ems);
                    prfprov_stats(&b);
                    prc = pp > 0 ? reap(pp, 10) : -1;
                    total++;
                    ok = ok && prc == 0 && b.token_ms - a.token_ms == 1
                         && b.delegated_handle == a.delegated_handle && ems == !noems;
                    CHECK(ok, "d. %s %s EMS %s our %s: failed (peer exit %d, token MS %lu, ems %d)",
                          dtls ? "DTLS1.2" : "TLS1.2", SUITES[si], noems ? "off" : "on",
                          srv ? "server" : "client", prc, b.token_ms - a.token_ms, ems);
                    pass += ok;
                }
    g_tok = NULL;
    printf("d. token in another process (NSS softoken behind a socket), Kpsa provisioned by "
           "another process, peers in other processes: %d/%d handshakes passed\n",
           pass, total);
    close(tokfd);
    reap(tp, 5);

    /* The scan: Kpsa must be nowhere in this process; a heap marker must be found. */
    marker = malloc(32);
    if (marker == NULL || RAND_bytes(marker, 32) != 1) {
        CHECK(0, "marker");
        free(marker);
        return;
    }
    {
        unsigned char *copy = malloc(32); /* the control: a second copy to find */
        if (copy == NULL) {
            free(marker);
            return;
        }
        memcpy(copy, marker, 32);
        scan_self(marker, 32, &key_hits, &marker_hits, &bytes);
        CHECK(key_hits == 0, "d. Kpsa found %ld times in this process", key_hits);
        CHECK(marker_hits >= 1, "d. the scanner did not find the heap marker");
        printf("d. memory scan of this process: %ld bytes read, Kpsa found %ld times, heap marker "
               "found %ld times (control)\n",
               bytes, key_hits, marker_hits);
        OPENSSL_cleanse(copy, 32);
        free(copy);
        free(marker);
    }
}

/* ---- main ---------------------------------------------------------------- */

int main(int argc, char **argv)
{
    char dir[128], params[512];
    struct p11tok t;
    struct local_tok lt;
    struct prf_token tok;
    CK_OBJECT_HANDLE obj;
    size_t klen = 0;
    CK_RV rv;

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1)
        alarm(60); /* a helper process outlives no killed parent by long */
    if (argc == 4 && strcmp(argv[1], "--provision") == 0)
        return provision(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "--token-server") == 0)
        return token_server(atoi(argv[2]), argv[3], argv[4]);
    if (argc == 7 && strcmp(argv[1], "--peer") == 0)
        return peer_main(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), argv[5], argv[6]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s\n", argv[0]);
        return 2;
    }
    if (access(NSS_MODULE, R_OK) != 0) {
        printf("SKIP: no %s (Debian libnss3)\n", NSS_MODULE);
        return 77;
    }
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_tmp, sizeof g_tmp, "/tmp/m2mpsk-tprf.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    atexit(cleanup);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    if ((g_exidx = SSL_get_ex_new_index(0, NULL, NULL, NULL, ex_free)) < 0
        || (g_lib = OSSL_LIB_CTX_new()) == NULL || !prfprov_load(g_lib)
        || RAND_bytes(g_peer_psk, sizeof g_peer_psk) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }

    /* a, b, e: NSS softoken in this process; the peer (in memory) has Kpsa. */
    snprintf(dir, sizeof dir, "%s/nss", g_tmp);
    if (mkdir(dir, 0700) != 0)
        return 1;
    nss_params(params, sizeof params, dir);
    rv = p11tok_open(&t, NSS_MODULE, params, NSS_TOKEN_SLOT, PIN, 1);
    CHECK(rv == CKR_OK, "NSS softoken open: %s", p11tok_rv(rv));
    if (rv == CKR_OK) {
        CK_BYTE v[64];
        CK_ATTRIBUTE va = { CKA_VALUE, v, sizeof v };
        rv = p11tok_import(&t, IDENTITY, g_peer_psk, sizeof g_peer_psk);
        CHECK(rv == CKR_OK, "NSS import: %s", p11tok_rv(rv));
        rv = p11tok_find(&t, IDENTITY, &obj, &klen);
        CHECK(rv == CKR_OK && klen == 32, "NSS find: %s, %zu bytes", p11tok_rv(rv), klen);
        rv = t.f->C_GetAttributeValue(t.sess, obj, &va, 1);
        CHECK(rv == CKR_ATTRIBUTE_SENSITIVE, "reading Kpsa's CKA_VALUE: %s", p11tok_rv(rv));
        lt.t = &t;
        lt.kpsa = obj;
        tok.prf = local_prf;
        tok.ctx = &lt;
        tok.klen = klen;
        g_tok = &tok;
        CHECK(run_matrix("a. NSS softoken in process"), "the matrix failed");
        run_control();
        run_rates(&tok, getenv("TOKEN_PRF_RATE_SECONDS") ? atof(getenv("TOKEN_PRF_RATE_SECONDS"))
                                                          : 1.0);
        g_tok = NULL;
    }
    p11tok_close(&t);

    run_softhsm();
    run_out_of_process("/proc/self/exe");
    {
        struct prfprov_stats s;
        prfprov_stats(&s);
        CHECK(s.issued == s.released, "handles issued %lu, released %lu", s.issued, s.released);
        CHECK(s.delegated_handle == 0, "handle-bearing secrets to the default PRF: %lu",
              s.delegated_handle);
        printf("totals: token MS %lu, token refusals %lu, default PRF calls %lu (with a handle: "
               "%lu), handles issued %lu, released %lu\n",
               s.token_ms, s.token_fail, s.delegated, s.delegated_handle, s.issued, s.released);
    }
    prfprov_cleanup();
    OSSL_LIB_CTX_free(g_lib);
    cleanup();
    printf("%s: %d failure(s)\n", g_failures ? "FAIL" : "PASS", g_failures);
    return g_failures ? 1 : 0;
}
