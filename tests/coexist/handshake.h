#ifndef M2MPSK_COEXIST_HANDSHAKE_H
#define M2MPSK_COEXIST_HANDSHAKE_H
#include <stddef.h>

#include "m2mpsk/m2mpsk.h"

/* Runs A and B in memory; writes what each bound. 0 on success. */
int coexist_handshake(m2mpsk_transport t, char *peer_a, char *peer_b,
                      size_t cap);
#endif
