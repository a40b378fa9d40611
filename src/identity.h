/* Identifier helpers shared inside the library. Not installed. */
#ifndef M2MPSK_IDENTITY_H
#define M2MPSK_IDENTITY_H

#include <stddef.h>

#include "m2mpsk/m2mpsk.h"

/* Longest Credential-ID: "12-" followed by a KpsaID. */
#define M2MPSK_CREDENTIAL_ID_MAX (3 + M2MPSK_KPSA_ID_MAX)

/* Writes the Credential-ID "12-<KpsaID>" (TS-0003 §10.4, type 12) into
 * `out`, NUL-terminated. The KpsaID is validated first.
 * Returns M2MPSK_OK, M2MPSK_E_INVALID (NULL), M2MPSK_E_KPSA_ID,
 * M2MPSK_E_KPSA_ID_LENGTH or M2MPSK_E_BUFFER
 * (M2MPSK_CREDENTIAL_ID_MAX + 1 bytes always suffice). */
int m2mpsk_credential_id(const char *kpsa_id, char *out, size_t out_cap);

#endif /* M2MPSK_IDENTITY_H */
