/* Shared by the files of src/pkcs11/ only. */
#ifndef M2MPSK_P11_INTERNAL_H
#define M2MPSK_P11_INTERNAL_H

#include <p11-kit/pkcs11.h>

#include "p11_keys.h"

struct m2mpsk_p11_token {
  void *dl; /* stays mapped: modules keep atexit handlers and thread keys */
  CK_FUNCTION_LIST_PTR f;
  CK_SESSION_HANDLE s;
  int initialized; /* this handle called C_Initialize */
  int open, logged_in;
};

/* "what: CKR_NAME" into err; returns M2MPSK_E_IO. */
int p11_fail(char *err, size_t cap, const char *what, CK_RV rv);

/* Every object matching the template, in a malloc'd array. */
int p11_find(m2mpsk_p11_token *t, CK_ATTRIBUTE *tmpl, CK_ULONG n,
             CK_OBJECT_HANDLE **out, size_t *count, char *err, size_t cap);

/* Unix seconds or "YYYY-MM-DDTHH:MM:SSZ"; 0 or -1. */

#endif /* M2MPSK_P11_INTERNAL_H */
