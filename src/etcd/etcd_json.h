/* The few JSON reads the etcd component makes, over json-c. (json-c is the
 * CLI's JSON library already, for the gateway; jansson cannot join it in
 * one executable: both export json_object_get() with other meanings.) */
#ifndef M2MPSK_ETCD_JSON_H
#define M2MPSK_ETCD_JSON_H

#include <json-c/json.h>
#include <stddef.h>
#include <stdint.h>

typedef struct json_object ej;

/* Parses exactly n bytes as one JSON value; NULL (with a reason in
 * *why) when they are not. */
static inline ej *ej_parse(const char *p, size_t n, const char **why) {
  if (n > INT32_MAX) {
    *why = "too large";
    return NULL;
  }
  struct json_tokener *t = json_tokener_new_ex(64);
  if (t == NULL) {
    *why = "out of memory";
    return NULL;
  }
  json_tokener_set_flags(t, JSON_TOKENER_STRICT);
  ej *j = json_tokener_parse_ex(t, p, (int)n);
  enum json_tokener_error e = json_tokener_get_error(t);
  if (j == NULL || e != json_tokener_success ||
      json_tokener_get_parse_end(t) != n) {
    *why = e == json_tokener_continue  ? "truncated JSON"
           : e != json_tokener_success ? json_tokener_error_desc(e)
                                       : "trailing bytes after the JSON";
    json_object_put(j);
    j = NULL;
  }
  json_tokener_free(t);
  return j;
}

static inline ej *ej_get(const ej *o, const char *k) {
  ej *v = NULL;
  if (o == NULL || !json_object_is_type(o, json_type_object) ||
      !json_object_object_get_ex(o, k, &v))
    return NULL;
  return v;
}
static inline int ej_is_object(const ej *o) {
  return o != NULL && json_object_is_type(o, json_type_object);
}
static inline int ej_is_array(const ej *o) {
  return o != NULL && json_object_is_type(o, json_type_array);
}
static inline int ej_is_boolean(const ej *o) {
  return o != NULL && json_object_is_type(o, json_type_boolean);
}
static inline int ej_is_true(const ej *o) {
  return ej_is_boolean(o) && json_object_get_boolean(o);
}
static inline int ej_is_integer(const ej *o) {
  return o != NULL && json_object_is_type(o, json_type_int);
}
static inline const char *ej_str(const ej *o) {
  return o != NULL && json_object_is_type(o, json_type_string)
             ? json_object_get_string((ej *)(uintptr_t)o)
             : NULL;
}
static inline size_t ej_size(const ej *o) {
  return ej_is_array(o) ? json_object_array_length(o) : 0;
}
static inline ej *ej_at(const ej *o, size_t i) {
  return ej_is_array(o) ? json_object_array_get_idx(o, i) : NULL;
}
static inline void ej_free(ej *o) {
  json_object_put(o);
}

#endif
