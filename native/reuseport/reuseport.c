/*
 * Listening sockets that share one port, and a classic BPF program that picks which of them takes
 * each new connection: the kernel's own way (SO_REUSEPORT with SO_ATTACH_REUSEPORT_CBPF) to give
 * some clients an accept queue of their own. Node 20 has neither option.
 *
 * listenShared(address, port, backlog, count): `count` TCP sockets bound to the same address and
 *   port with SO_REUSEPORT (and SO_REUSEADDR, as Node sets it), non-blocking and close-on-exec,
 *   listening with `backlog`; port 0 takes a free port for the first and the same one for the
 *   rest. An IPv6 address takes IPv4 too (IPV6_V6ONLY off, as Node listens on "::"). A port some
 *   socket listens on already is refused (EADDRINUSE), as Node's own listen would: without that
 *   check a second process of the same user could join the group and take half the connections.
 *   Gives the descriptors in the group's order, which is the order the program's answer indexes.
 * steer(fd, program): attaches `program` (a Buffer of struct sock_filter, 8 bytes each, in the
 *   machine's byte order) to the group `fd` belongs to, replacing the one before. The program
 *   sees the SYN with its data at the TCP header; the IP header is reached at SKF_NET_OFF. An
 *   answer past the group's size falls back to the kernel's hash.
 * Failures throw an Error whose code is the errno's name and whose message names the call.
 * refuser.c adds refuse / refused / stopRefusing / setRefusal: a member of the group answered by
 *   a thread; and steerGuarded / surges: the steering under that thread's lock, with its guard.
 *   The daemon steers through steerGuarded only; the plain steer here is for tests and tools.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/filter.h>
#include <node_api.h>
#include "addon-error.h"
#include "refuser.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

#define MAX_GROUP 16

static int open_one(const struct sockaddr_storage *where, socklen_t length, int backlog, const char **call) {
  int one = 1, zero = 0;
  int fd = socket(where->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) { *call = "socket"; return -1; }
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) { *call = "setsockopt(SO_REUSEADDR)"; goto fail; }
  if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) { *call = "setsockopt(SO_REUSEPORT)"; goto fail; }
  if (where->ss_family == AF_INET6 && setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero) != 0) {
    *call = "setsockopt(IPV6_V6ONLY)";
    goto fail;
  }
  if (bind(fd, (const struct sockaddr *)where, length) != 0) { *call = "bind"; goto fail; }
  if (listen(fd, backlog) != 0) { *call = "listen"; goto fail; }
  return fd;
fail: {
    int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
}

static napi_value listen_shared(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  char address[INET6_ADDRSTRLEN + 1];
  int32_t port, backlog, count;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 4 || napi_get_value_string_utf8(env, argv[0], address, sizeof address, NULL) != napi_ok ||
      napi_get_value_int32(env, argv[1], &port) != napi_ok || napi_get_value_int32(env, argv[2], &backlog) != napi_ok ||
      napi_get_value_int32(env, argv[3], &count) != napi_ok || port < 0 || port > 65535 || backlog < 1 || count < 1 ||
      count > MAX_GROUP) {
    napi_throw_type_error(env, NULL, "listenShared(address, port 0-65535, backlog >= 1, count 1-16)");
    return NULL;
  }
  struct sockaddr_storage where;
  socklen_t length;
  memset(&where, 0, sizeof where);
  struct sockaddr_in *v4 = (struct sockaddr_in *)&where;
  struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&where;
  if (inet_pton(AF_INET, address, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons((uint16_t)port);
    length = sizeof *v4;
  } else if (inet_pton(AF_INET6, address, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons((uint16_t)port);
    length = sizeof *v6;
  } else {
    napi_throw_type_error(env, "EINVAL", "listenShared: the address must be an IPv4 or IPv6 address");
    return NULL;
  }
  // Another process listening there already (another Ichidan among them, whose sockets would
  // let ours join their group and split the connections): a plain bind finds it.
  if (port != 0) {
    int probe = socket(where.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (probe < 0) return throw_errno(env, "reuseport", "socket", errno);
    if (setsockopt(probe, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 || bind(probe, (const struct sockaddr *)&where, length) != 0) {
      int err = errno;
      close(probe);
      return throw_errno(env, "reuseport", "bind", err);
    }
    close(probe);
  }
  int fds[MAX_GROUP];
  for (int i = 0; i < count; i++) {
    const char *call = "";
    fds[i] = open_one(&where, length, backlog, &call);
    if (fds[i] < 0) {
      int err = errno;
      for (int j = 0; j < i; j++) close(fds[j]);
      return throw_errno(env, "reuseport", call, err);
    }
    if (i == 0 && port == 0) {
      struct sockaddr_storage bound;
      socklen_t bound_length = sizeof bound;
      if (getsockname(fds[0], (struct sockaddr *)&bound, &bound_length) != 0) {
        int err = errno;
        close(fds[0]);
        return throw_errno(env, "reuseport", "getsockname", err);
      }
      if (where.ss_family == AF_INET) v4->sin_port = ((struct sockaddr_in *)&bound)->sin_port;
      else v6->sin6_port = ((struct sockaddr_in6 *)&bound)->sin6_port;
    }
  }
  napi_value list;
  napi_create_array_with_length(env, (size_t)count, &list);
  for (int i = 0; i < count; i++) {
    napi_value fd;
    napi_create_int32(env, fds[i], &fd);
    napi_set_element(env, list, (uint32_t)i, fd);
  }
  return list;
}

static napi_value steer(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  void *data;
  size_t bytes;
  bool is_buffer = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 ||
      napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &data, &bytes) != napi_ok || bytes == 0 ||
      bytes % sizeof(struct sock_filter) != 0 || bytes / sizeof(struct sock_filter) > BPF_MAXINSNS) {
    napi_throw_type_error(env, NULL, "steer(fd, program): a descriptor and a Buffer of 1-4096 sock_filter instructions");
    return NULL;
  }
  struct sock_fprog program = { .len = (unsigned short)(bytes / sizeof(struct sock_filter)), .filter = data };
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &program, sizeof program) != 0) {
    return throw_errno(env, "reuseport", "setsockopt(SO_ATTACH_REUSEPORT_CBPF)", errno);
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value function;
  napi_create_function(env, "listenShared", NAPI_AUTO_LENGTH, listen_shared, NULL, &function);
  napi_set_named_property(env, exports, "listenShared", function);
  napi_create_function(env, "steer", NAPI_AUTO_LENGTH, steer, NULL, &function);
  napi_set_named_property(env, exports, "steer", function);
  refuser_register(env, exports);
  return exports;
}
