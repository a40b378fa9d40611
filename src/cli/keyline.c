/* One line of a key file, for the commands that copy records from a key
 * file elsewhere (keys import: to etcd, or into a PKCS#11 token). The file
 * has been checked whole by the library's loader first (permissions,
 * syntax, values, duplicates, with line numbers); this reads the fields. */
#include <sodium.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"

int cli_parse_key_line(char *line, cli_key_record *r) {
  memset(r, 0, sizeof(*r));
  char *save = NULL, *f;
  int any = 0;
  for (f = strtok_r(line, " \t\r", &save); f != NULL;
       f = strtok_r(NULL, " \t\r", &save)) {
    if (f[0] == '#' && !any)
      return 0;
    any = 1;
    char *eq = strchr(f, '=');
    if (eq == NULL)
      return -1;
    *eq = '\0';
    const char *v = eq + 1;
    size_t got = 0;
    const char *end = NULL;
    if (strcmp(f, "kpsa-id") == 0) {
      snprintf(r->kpsa_id, sizeof(r->kpsa_id), "%s", v);
    } else if (strcmp(f, "idb") == 0) {
      snprintf(r->idb, sizeof(r->idb), "%s", v);
    } else if (strcmp(f, "ida") == 0) {
      snprintf(r->ida, sizeof(r->ida), "%s", v);
    } else if (strcmp(f, "not-before") == 0) {
      if (cli_parse_time(v, &r->not_before) != 0)
        return -1;
    } else if (strcmp(f, "not-after") == 0) {
      if (cli_parse_time(v, &r->not_after) != 0)
        return -1;
    } else if (strcmp(f, "kpsa") == 0) {
      if (strncmp(v, "hex:", 4) == 0 &&
          sodium_hex2bin(r->key, sizeof(r->key), v + 4, strlen(v + 4), NULL,
                         &got, &end) == 0 &&
          *end == '\0')
        r->key_len = got;
      else if (strncmp(v, "base64:", 7) == 0 &&
               sodium_base642bin(r->key, sizeof(r->key), v + 7, strlen(v + 7),
                                 NULL, &got, &end,
                                 sodium_base64_VARIANT_ORIGINAL) == 0 &&
               *end == '\0')
        r->key_len = got;
      else
        return -1;
    }
  }
  if (!any)
    return 0;
  return r->kpsa_id[0] && r->idb[0] && r->key_len ? 1 : -1;
}
