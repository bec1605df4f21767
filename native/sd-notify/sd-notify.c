/*
 * notify(socketPath, message): one datagram to systemd's notification socket (sd_notify(3)), which
 * Node cannot send: its dgram module has no unix sockets.
 *
 * Takes: the path of $NOTIFY_SOCKET (a file system path, or "@name" for the abstract namespace)
 * and the message ("READY=1", "RELOADING=1\nMONOTONIC_USEC=...", "STOPPING=1").
 * Gives: nothing; a failure throws an Error whose code is the errno's name (ENOENT, ECONNREFUSED,
 * EACCES, ...). Sent from this process, so systemd knows it comes from the main PID.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *call, int err) {
  const char *name = strerrorname_np(err);
  char message[160];
  snprintf(message, sizeof message, "sd_notify: %s failed: %s (%s)", call, name ? name : "unknown errno", strerror(err));
  napi_throw_error(env, name, message);
  return NULL;
}

static napi_value notify(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct sockaddr_un address = { .sun_family = AF_UNIX };
  char message[1024];
  size_t path_length = 0, message_length = 0;
  if (argc < 2
      || napi_get_value_string_utf8(env, argv[0], address.sun_path, sizeof address.sun_path, &path_length) != napi_ok
      || napi_get_value_string_utf8(env, argv[1], message, sizeof message, &message_length) != napi_ok) {
    napi_throw_type_error(env, NULL, "notify(socketPath: string, message: string)");
    return NULL;
  }
  if (path_length == 0 || path_length >= sizeof address.sun_path - 1) return throw_errno(env, "the socket path", ENAMETOOLONG);
  if (address.sun_path[0] == '@') address.sun_path[0] = '\0';
  socklen_t address_length = offsetof(struct sockaddr_un, sun_path) + path_length + (address.sun_path[0] == '\0' ? 0 : 1);
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "socket", errno);
  ssize_t sent = sendto(fd, message, message_length, MSG_NOSIGNAL, (struct sockaddr *)&address, address_length);
  int err = errno;
  close(fd);
  if (sent < 0) return throw_errno(env, "sendto", err);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value function;
  napi_create_function(env, "notify", NAPI_AUTO_LENGTH, notify, NULL, &function);
  napi_set_named_property(env, exports, "notify", function);
  return exports;
}
