/*
 * A listening socket answered by a thread of its own, never by the event loop: each connection
 * accepted gets one reply line (the admission's 421 under overload) and is closed, so that a flood
 * the kernel steers here costs Node nothing.
 *
 * refuse(fd, line): starts a thread that owns the listening socket `fd` from now on. For each
 *   connection: the line written, the sending side shut (the client reads the line and a clean
 *   end), what the client sends meanwhile read and dropped, the socket closed when the client
 *   closes its side or after LINGER_SECONDS; past MAX_TRACKED connections waiting so, a new one is
 *   closed right after its line. Out of descriptors (or memory), it leaves the connections queued
 *   and looks again 10 ms later rather than spinning on accept.
 * refused(fd): connections answered so far (a number). stopRefusing(fd): ends the thread, closes
 *   every connection it still holds, the listening socket and the guard's duplicate of the general
 *   one. At most MAX_REFUSERS at once.
 * setRefusal(fd, line): the line for the connections answered from now on.
 *
 * The guard: a flood's first fraction of a second, before the event loop (busy with the flood's
 * first connections, its timers firing late) can tell it is one. While armed, the same thread
 * looks at the general queue's length every GUARD_MS, or GUARD_IDLE_MS after a look that found
 * it empty (TCP_INFO on a listening socket gives its accept queue) and, once it is at `surgeAt` or past it, attaches the surge program (everyone but
 * the known and blocked to this socket) itself, and disarms: the flood is answered here from then
 * on, without waiting for Node.
 * steerGuarded(fd, generalFd, program, surgeProgram, surgeAt, acknowledged): attaches `program` to
 *   the group and arms the guard with `surgeProgram` (null or surgeAt 0: no guard), unless the
 *   guard fired since the count `acknowledged`: its surge program then stays in force (false is
 *   returned) until the caller has taken it in. Both under one lock, so a steering from Node and
 *   the guard's never cross.
 * surges(fd): { count, waiting } — how often the guard fired, and the general queue's length the
 *   last time.
 * Failures throw an Error whose code is the errno's name.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <linux/filter.h>
#include "addon-error.h"
#include "refuser.h"

#define MAX_REFUSERS 16
#define MAX_TRACKED 8192
#define LINGER_SECONDS 10
#define MAX_LINE 512
#define WAKE_TAG UINT64_MAX
#define LISTEN_TAG (UINT64_MAX - 1)
#define GUARD_MS 5
/* While the general queue is empty at a look (Node keeps up): the next look comes later. */
#define GUARD_IDLE_MS 20

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

typedef struct {
  int fd;
  time_t deadline;
} tracked;

typedef struct {
  int listen_fd;
  int epfd;
  int wake_fd;
  pthread_t thread;
  char line[MAX_LINE];
  size_t line_length;
  _Atomic uint64_t refused;
  /* Under lock: the reply line (replaced by setRefusal while the thread runs); the guard's
   * general queue socket (a duplicate, closed with the thread), the length that fires it (0:
   * disarmed) and the program it then attaches. */
  pthread_mutex_t lock;
  int guard_fd;
  uint32_t guard_at;
  struct sock_filter *guard_program;
  unsigned short guard_length;
  _Atomic int armed;
  _Atomic int stopping;
  _Atomic uint64_t surges;
  _Atomic uint32_t surge_waiting;
  /* Connections waiting for their client to close, oldest first (all linger as long). */
  tracked ring[MAX_TRACKED];
  size_t head, count;
} refuser;

static refuser *refusers[MAX_REFUSERS];
static pthread_mutex_t table = PTHREAD_MUTEX_INITIALIZER;

static void forget(refuser *r, size_t slot) {
  if (r->ring[slot].fd < 0) return;
  epoll_ctl(r->epfd, EPOLL_CTL_DEL, r->ring[slot].fd, NULL);
  close(r->ring[slot].fd);
  r->ring[slot].fd = -1;
}

static void answer(refuser *r, int fd) {
  pthread_mutex_lock(&r->lock);
  ssize_t ignored = write(fd, r->line, r->line_length);
  pthread_mutex_unlock(&r->lock);
  (void)ignored;
  shutdown(fd, SHUT_WR);
  atomic_fetch_add(&r->refused, 1);
  if (r->count == MAX_TRACKED) {
    close(fd);
    return;
  }
  size_t slot = (r->head + r->count) % MAX_TRACKED;
  struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP, .data.u64 = slot };
  if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
    close(fd);
    return;
  }
  r->ring[slot].fd = fd;
  r->ring[slot].deadline = time(NULL) + LINGER_SECONDS;
  r->count++;
}

static void drain(refuser *r, size_t slot) {
  char sink[4096];
  for (;;) {
    ssize_t n = read(r->ring[slot].fd, sink, sizeof sink);
    if (n > 0) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    forget(r, slot);
    return;
  }
}

static void expire(refuser *r) {
  time_t now = time(NULL);
  while (r->count > 0 && (r->ring[r->head].fd < 0 || r->ring[r->head].deadline <= now)) {
    forget(r, r->head);
    r->head = (r->head + 1) % MAX_TRACKED;
    r->count--;
  }
}

static int attach(int fd, struct sock_filter *program, unsigned short length) {
  struct sock_fprog p = { .len = length, .filter = program };
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &p, sizeof p);
}

/* The guard's look at the general queue: the surge program in force once it is long enough. Gives
 * the queue's length (0 when not armed or unreadable), for the time of the next look. */
static uint32_t watch(refuser *r) {
  if (!atomic_load(&r->armed)) return 0;
  uint32_t waiting = 0;
  pthread_mutex_lock(&r->lock);
  struct tcp_info info;
  socklen_t length = sizeof info;
  if (r->guard_at > 0 && getsockopt(r->guard_fd, IPPROTO_TCP, TCP_INFO, &info, &length) == 0) waiting = info.tcpi_unacked;
  if (r->guard_at > 0 && waiting >= r->guard_at) {
    if (attach(r->guard_fd, r->guard_program, r->guard_length) == 0) {
      atomic_store(&r->surge_waiting, info.tcpi_unacked);
      atomic_fetch_add(&r->surges, 1);
    }
    // Disarmed either way: a program the kernel refused is not tried again 200 times a second.
    r->guard_at = 0;
    atomic_store(&r->armed, 0);
  }
  pthread_mutex_unlock(&r->lock);
  return waiting;
}

static void *run(void *arg) {
  refuser *r = arg;
  struct epoll_event events[64];
  uint32_t waiting = 0;
  for (;;) {
    int n = epoll_wait(r->epfd, events, 64, !atomic_load(&r->armed) ? 1000 : waiting > 0 ? GUARD_MS : GUARD_IDLE_MS);
    for (int i = 0; i < n; i++) {
      uint64_t tag = events[i].data.u64;
      if (tag == WAKE_TAG) {
        // Woken to stop, or to look at a guard just armed (its first look within GUARD_MS, not a second).
        uint64_t ignored;
        ssize_t n_read = read(r->wake_fd, &ignored, sizeof ignored);
        (void)n_read;
        if (atomic_load(&r->stopping)) return NULL;
        continue;
      }
      if (tag == LISTEN_TAG) {
        for (;;) {
          int fd = accept4(r->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
          if (fd >= 0) {
            answer(r, fd);
            continue;
          }
          // Out of descriptors or memory: the connection stays queued; a pause, not a spin on it.
          if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            struct timespec pause = { .tv_sec = 0, .tv_nsec = 10 * 1000 * 1000 };
            nanosleep(&pause, NULL);
          }
          break;
        }
      } else if (tag < MAX_TRACKED && r->ring[tag].fd >= 0) {
        drain(r, (size_t)tag);
      }
    }
    waiting = watch(r);
    expire(r);
  }
}

static int fd_argument(napi_env env, napi_callback_info info, size_t want, napi_value *argv, int32_t *fd) {
  size_t argc = want;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  return argc >= want && napi_get_value_int32(env, argv[0], fd) == napi_ok && *fd >= 0;
}

static napi_value refuse(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  size_t length = 0;
  refuser *r = calloc(1, sizeof *r);
  if (!r) return throw_errno(env, "refuser", "calloc", ENOMEM);
  if (!fd_argument(env, info, 2, argv, &fd) ||
      napi_get_value_string_utf8(env, argv[1], r->line, sizeof r->line, &length) != napi_ok || length == 0 ||
      length >= sizeof r->line - 1) {
    free(r);
    napi_throw_type_error(env, NULL, "refuse(fd, line): a listening socket's descriptor and a reply line of 1-510 bytes");
    return NULL;
  }
  r->line_length = length;
  r->listen_fd = fd;
  r->guard_fd = -1;
  pthread_mutex_init(&r->lock, NULL);
  for (size_t i = 0; i < MAX_TRACKED; i++) r->ring[i].fd = -1;
  const char *call = "epoll_create1";
  r->epfd = epoll_create1(EPOLL_CLOEXEC);
  r->wake_fd = r->epfd < 0 ? -1 : eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->epfd >= 0 && r->wake_fd < 0) call = "eventfd";
  struct epoll_event listen_ev = { .events = EPOLLIN, .data.u64 = LISTEN_TAG };
  struct epoll_event wake_ev = { .events = EPOLLIN, .data.u64 = WAKE_TAG };
  int err = 0;
  if (r->epfd < 0 || r->wake_fd < 0) err = errno;
  else if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &listen_ev) != 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wake_fd, &wake_ev) != 0) {
    err = errno;
    call = "epoll_ctl";
  }
  pthread_mutex_lock(&table);
  int free_slot = -1;
  for (int i = 0; i < MAX_REFUSERS; i++) {
    if (refusers[i] && refusers[i]->listen_fd == fd && !err) { err = EEXIST; call = "refuse (the descriptor has a refuser)"; }
    if (!refusers[i] && free_slot < 0) free_slot = i;
  }
  if (!err && free_slot < 0) { err = EMFILE; call = "refuse (too many refusers)"; }
  if (!err) {
    err = pthread_create(&r->thread, NULL, run, r);
    if (err) call = "pthread_create";
    else refusers[free_slot] = r;
  }
  pthread_mutex_unlock(&table);
  if (err) {
    if (r->epfd >= 0) close(r->epfd);
    if (r->wake_fd >= 0) close(r->wake_fd);
    pthread_mutex_destroy(&r->lock);
    free(r);
    return throw_errno(env, "refuser", call, err);
  }
  return NULL;
}

static refuser *find(int fd, int take) {
  refuser *found = NULL;
  pthread_mutex_lock(&table);
  for (int i = 0; i < MAX_REFUSERS; i++) {
    if (refusers[i] && refusers[i]->listen_fd == fd) {
      found = refusers[i];
      if (take) refusers[i] = NULL;
    }
  }
  pthread_mutex_unlock(&table);
  return found;
}

static napi_value refused(napi_env env, napi_callback_info info) {
  napi_value argv[1], result;
  int32_t fd;
  if (!fd_argument(env, info, 1, argv, &fd)) {
    napi_throw_type_error(env, NULL, "refused(fd): a descriptor given to refuse()");
    return NULL;
  }
  refuser *r = find(fd, 0);
  if (!r) return throw_errno(env, "refuser", "refused (no refuser on that descriptor)", ENOENT);
  napi_create_double(env, (double)atomic_load(&r->refused), &result);
  return result;
}

static napi_value stop_refusing(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int32_t fd;
  if (!fd_argument(env, info, 1, argv, &fd)) {
    napi_throw_type_error(env, NULL, "stopRefusing(fd): a descriptor given to refuse()");
    return NULL;
  }
  refuser *r = find(fd, 1);
  if (!r) return NULL;
  atomic_store(&r->stopping, 1);
  uint64_t one = 1;
  ssize_t ignored = write(r->wake_fd, &one, sizeof one);
  (void)ignored;
  pthread_join(r->thread, NULL);
  for (size_t i = 0; i < r->count; i++) forget(r, (r->head + i) % MAX_TRACKED);
  close(r->listen_fd);
  close(r->epfd);
  close(r->wake_fd);
  if (r->guard_fd >= 0) close(r->guard_fd);
  free(r->guard_program);
  pthread_mutex_destroy(&r->lock);
  free(r);
  return NULL;
}

/* A Buffer of 1-BPF_MAXINSNS sock_filter instructions, or null (none). */
static int program_argument(napi_env env, napi_value value, void **data, size_t *count) {
  napi_valuetype type;
  bool is_buffer = false;
  size_t bytes = 0;
  *data = NULL;
  *count = 0;
  if (napi_typeof(env, value, &type) != napi_ok) return 0;
  if (type == napi_null) return 1;
  if (napi_is_buffer(env, value, &is_buffer) != napi_ok || !is_buffer || napi_get_buffer_info(env, value, data, &bytes) != napi_ok) return 0;
  if (bytes == 0 || bytes % sizeof(struct sock_filter) != 0 || bytes / sizeof(struct sock_filter) > BPF_MAXINSNS) return 0;
  *count = bytes / sizeof(struct sock_filter);
  return 1;
}

static napi_value steer_guarded(napi_env env, napi_callback_info info) {
  napi_value argv[6], result;
  int32_t fd, general_fd;
  uint32_t surge_at;
  double acknowledged;
  void *program, *surge;
  size_t program_count, surge_count;
  if (!fd_argument(env, info, 6, argv, &fd) || napi_get_value_int32(env, argv[1], &general_fd) != napi_ok || general_fd < 0 ||
      !program_argument(env, argv[2], &program, &program_count) || program == NULL ||
      !program_argument(env, argv[3], &surge, &surge_count) || napi_get_value_uint32(env, argv[4], &surge_at) != napi_ok ||
      napi_get_value_double(env, argv[5], &acknowledged) != napi_ok || !(acknowledged >= 0)) {
    napi_throw_type_error(env, NULL, "steerGuarded(fd, generalFd, program, surgeProgram or null, surgeAt >= 0, acknowledged >= 0)");
    return NULL;
  }
  refuser *r = find(fd, 0);
  if (!r) return throw_errno(env, "refuser", "steerGuarded (no refuser on that descriptor)", ENOENT);
  struct sock_filter *copy = NULL;
  if (surge && surge_at > 0) {
    copy = malloc(surge_count * sizeof *copy);
    if (!copy) return throw_errno(env, "refuser", "malloc", ENOMEM);
    memcpy(copy, surge, surge_count * sizeof *copy);
  }
  int err = 0;
  const char *call = "";
  bool steered = false, wake = false;
  pthread_mutex_lock(&r->lock);
  if ((double)atomic_load(&r->surges) > acknowledged) {
    free(copy);  // the guard's surge stands until it has been taken in
  } else if (r->guard_fd < 0 && (r->guard_fd = fcntl(general_fd, F_DUPFD_CLOEXEC, 0)) < 0) {
    err = errno;
    call = "fcntl(F_DUPFD_CLOEXEC)";
    free(copy);
  } else if (attach(r->guard_fd, program, (unsigned short)program_count) != 0) {
    err = errno;
    call = "setsockopt(SO_ATTACH_REUSEPORT_CBPF)";
    free(copy);
    // The program before stays in force, but not a guard the steering asked no longer for.
    r->guard_at = 0;
    atomic_store(&r->armed, 0);
  } else {
    free(r->guard_program);
    r->guard_program = copy;
    r->guard_length = (unsigned short)surge_count;
    r->guard_at = copy ? surge_at : 0;
    atomic_store(&r->armed, copy != NULL);
    steered = true;
    wake = copy != NULL;
  }
  pthread_mutex_unlock(&r->lock);
  if (wake) {
    uint64_t one = 1;
    ssize_t ignored = write(r->wake_fd, &one, sizeof one);
    (void)ignored;
  }
  if (err) return throw_errno(env, "reuseport", call, err);
  napi_get_boolean(env, steered, &result);
  return result;
}

static napi_value set_refusal(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int32_t fd;
  char line[MAX_LINE];
  size_t length = 0;
  if (!fd_argument(env, info, 2, argv, &fd) || napi_get_value_string_utf8(env, argv[1], line, sizeof line, &length) != napi_ok ||
      length == 0 || length >= sizeof line - 1) {
    napi_throw_type_error(env, NULL, "setRefusal(fd, line): a descriptor given to refuse() and a reply line of 1-510 bytes");
    return NULL;
  }
  refuser *r = find(fd, 0);
  if (!r) return throw_errno(env, "refuser", "setRefusal (no refuser on that descriptor)", ENOENT);
  pthread_mutex_lock(&r->lock);
  memcpy(r->line, line, length);
  r->line_length = length;
  pthread_mutex_unlock(&r->lock);
  return NULL;
}

static napi_value surges(napi_env env, napi_callback_info info) {
  napi_value argv[1], result, count, waiting;
  int32_t fd;
  if (!fd_argument(env, info, 1, argv, &fd)) {
    napi_throw_type_error(env, NULL, "surges(fd): a descriptor given to refuse()");
    return NULL;
  }
  refuser *r = find(fd, 0);
  if (!r) return throw_errno(env, "refuser", "surges (no refuser on that descriptor)", ENOENT);
  napi_create_object(env, &result);
  napi_create_double(env, (double)atomic_load(&r->surges), &count);
  napi_create_uint32(env, atomic_load(&r->surge_waiting), &waiting);
  napi_set_named_property(env, result, "count", count);
  napi_set_named_property(env, result, "waiting", waiting);
  return result;
}

void refuser_register(napi_env env, napi_value exports) {
  napi_value function;
  napi_create_function(env, "refuse", NAPI_AUTO_LENGTH, refuse, NULL, &function);
  napi_set_named_property(env, exports, "refuse", function);
  napi_create_function(env, "refused", NAPI_AUTO_LENGTH, refused, NULL, &function);
  napi_set_named_property(env, exports, "refused", function);
  napi_create_function(env, "stopRefusing", NAPI_AUTO_LENGTH, stop_refusing, NULL, &function);
  napi_set_named_property(env, exports, "stopRefusing", function);
  napi_create_function(env, "steerGuarded", NAPI_AUTO_LENGTH, steer_guarded, NULL, &function);
  napi_set_named_property(env, exports, "steerGuarded", function);
  napi_create_function(env, "setRefusal", NAPI_AUTO_LENGTH, set_refusal, NULL, &function);
  napi_set_named_property(env, exports, "setRefusal", function);
  napi_create_function(env, "surges", NAPI_AUTO_LENGTH, surges, NULL, &function);
  napi_set_named_property(env, exports, "surges", function);
}
