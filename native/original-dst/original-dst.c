/*
 * originalDst(fd): the destination a TCP connection was addressed to before netfilter's DNAT or
 * REDIRECT rewrote it, as the connection tracking entry remembers it. Node has no API for it.
 *
 * Takes: the file descriptor of an accepted TCP socket (Linux only).
 * Gives: { address, port, family: 4 | 6 }, or null when the connection was not redirected: the
 * kernel tracks no entry for it (ENOENT, or ENOPROTOOPT where conntrack is not loaded), or the
 * entry's destination is the socket's own local address (conntrack records every connection in a
 * namespace with NAT rules, rewritten or not). Any other failure throws an Error whose code is the
 * errno's name (EBADF, ENOTSOCK, ...).
 * An IPv6 socket whose local address is IPv4-mapped carries an IPv4 connection (a dual-stack
 * listener on ::), so it is asked the IPv4 question: conntrack has no IPv6 entry for it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/netfilter_ipv4.h>
#include <linux/netfilter_ipv6/ip6_tables.h>
#include <node_api.h>

static napi_value throw_errno(napi_env env, const char *call, int fd, int err) {
  const char *name = strerrorname_np(err);
  char message[160];
  snprintf(message, sizeof message, "originalDst: %s on fd %d failed: %s (%s)", call, fd,
           name ? name : "unknown errno", strerror(err));
  napi_throw_error(env, name, message);
  return NULL;
}

static napi_value result(napi_env env, int af, const void *addr, in_port_t port) {
  char text[INET6_ADDRSTRLEN];
  inet_ntop(af, addr, text, sizeof text);
  napi_value object, address, port_value, family;
  napi_create_object(env, &object);
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &address);
  napi_create_uint32(env, ntohs(port), &port_value);
  napi_create_uint32(env, af == AF_INET ? 4 : 6, &family);
  napi_set_named_property(env, object, "address", address);
  napi_set_named_property(env, object, "port", port_value);
  napi_set_named_property(env, object, "family", family);
  return object;
}

static napi_value null_value(napi_env env) {
  napi_value value;
  napi_get_null(env, &value);
  return value;
}

static int not_redirected(int err) {
  return err == ENOENT || err == ENOPROTOOPT;
}

static napi_value ask_ipv4(napi_env env, int fd, struct in_addr local, in_port_t local_port) {
  struct sockaddr_in dst;
  socklen_t length = sizeof dst;
  if (getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &dst, &length) != 0) {
    if (not_redirected(errno)) return null_value(env);
    return throw_errno(env, "getsockopt(SOL_IP, SO_ORIGINAL_DST)", fd, errno);
  }
  if (dst.sin_addr.s_addr == local.s_addr && dst.sin_port == local_port) return null_value(env);
  return result(env, AF_INET, &dst.sin_addr, dst.sin_port);
}

static napi_value ask_ipv6(napi_env env, int fd, const struct sockaddr_in6 *local) {
  struct sockaddr_in6 dst;
  socklen_t length = sizeof dst;
  if (getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &dst, &length) != 0) {
    if (not_redirected(errno)) return null_value(env);
    return throw_errno(env, "getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)", fd, errno);
  }
  if (IN6_ARE_ADDR_EQUAL(&dst.sin6_addr, &local->sin6_addr) && dst.sin6_port == local->sin6_port) {
    return null_value(env);
  }
  return result(env, AF_INET6, &dst.sin6_addr, dst.sin6_port);
}

static napi_value original_dst(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "originalDst: the argument must be a file descriptor (a number >= 0)");
    return NULL;
  }

  struct sockaddr_storage local;
  socklen_t length = sizeof local;
  if (getsockname(fd, (struct sockaddr *)&local, &length) != 0) {
    return throw_errno(env, "getsockname", fd, errno);
  }
  if (local.ss_family == AF_INET) {
    const struct sockaddr_in *local4 = (const struct sockaddr_in *)&local;
    return ask_ipv4(env, fd, local4->sin_addr, local4->sin_port);
  }
  if (local.ss_family == AF_INET6) {
    const struct sockaddr_in6 *local6 = (const struct sockaddr_in6 *)&local;
    if (IN6_IS_ADDR_V4MAPPED(&local6->sin6_addr)) {
      struct in_addr local4;
      memcpy(&local4, &local6->sin6_addr.s6_addr[12], sizeof local4);
      return ask_ipv4(env, fd, local4, local6->sin6_port);
    }
    return ask_ipv6(env, fd, local6);
  }
  return throw_errno(env, "getsockname (neither IPv4 nor IPv6)", fd, EAFNOSUPPORT);
}

NAPI_MODULE_INIT() {
  napi_value function;
  napi_create_function(env, "originalDst", NAPI_AUTO_LENGTH, original_dst, NULL, &function);
  napi_set_named_property(env, exports, "originalDst", function);
  return exports;
}
