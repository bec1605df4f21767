/* An Error for a failed system call, as both files of this addon throw it: code = the errno's name.
 * Needs _GNU_SOURCE (strerrorname_np), defined by each file before its first include. */
#ifndef ICHIDAN_ADDON_ERROR_H
#define ICHIDAN_ADDON_ERROR_H
#include <stdio.h>
#include <string.h>
#include <node_api.h>

static inline napi_value throw_errno(napi_env env, const char *what, const char *call, int err) {
  const char *name = strerrorname_np(err);
  char message[200];
  snprintf(message, sizeof message, "%s: %s failed: %s (%s)", what, call, name ? name : "unknown errno", strerror(err));
  napi_throw_error(env, name, message);
  return NULL;
}
#endif
