/* The key-file parser, m2mpsk_keystore_load_file(). src/keyfile.c has no
 * parse-from-buffer entry point, so the input is written to a memfd (mode
 * 0600, created once per process) and loaded through its /proc/self/fd
 * path: the same open, fstat and permission check, read loop and line
 * parser a real key file goes through. The target keystore already holds
 * FZ_KPSA_ID, so that a file naming it reaches the all-or-nothing merge's
 * duplicate path. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (fd < 0) {
    fd = memfd_create("m2mpsk-fuzz-keyfile", MFD_CLOEXEC);
    fz_check(fd >= 0, "memfd_create");
    fz_check(fchmod(fd, 0600) == 0, "fchmod");
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
  }
  fz_check(ftruncate(fd, 0) == 0, "ftruncate");
  size_t off = 0;
  while (off < size) {
    ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
    fz_check(w > 0, "pwrite");
    off += (size_t)w;
  }

  m2mpsk_keystore *ks = NULL;
  fz_check(m2mpsk_keystore_new(&ks, 0) == M2MPSK_OK, "keystore_new");
  fz_check(m2mpsk_keystore_add(ks, FZ_KPSA_ID, fz_key, sizeof(fz_key), FZ_IDA,
                               FZ_IDB, 0, 0) == M2MPSK_OK,
           "keystore_add");
  size_t line = 0;
  int rc = m2mpsk_keystore_load_file(ks, path, &line);
  size_t count = m2mpsk_keystore_count(ks);
  /* All or nothing: on failure, only the pre-existing record remains. */
  if (rc != M2MPSK_OK && count != 1) {
    fprintf(stderr, "load_file failed (%d, line %zu) but left %zu records\n",
            rc, line, count);
    __builtin_trap();
  }
  if (rc == M2MPSK_OK) {
    char ida[M2MPSK_ID_MAX + 1], idb[M2MPSK_ID_MAX + 1];
    int64_t nb, na;
    int revoked;
    fz_status(m2mpsk_keystore_lookup(ks, FZ_KPSA_NOIDA, ida, sizeof(ida), idb,
                                     sizeof(idb), &nb, &na, &revoked),
              0, "keystore_lookup");
    /* 1 or 0: anything else is a bug. */
    fz_check(m2mpsk_keystore_is_locked(ks) >= 0, "keystore_is_locked");
    (void)m2mpsk_keystore_key_memory(ks);
  }
  (void)m2mpsk_strerror(rc);
  m2mpsk_keystore_free(ks);
  return 0;
}
