// Inline wrappers for C macros that the Swift importer cannot see (function-like macros,
// SSL_OP_* bits). Nothing here makes a decision; each wrapper is one call.
#ifndef CRELAYSHIMS_H
#define CRELAYSHIMS_H

#include <libssh/libssh.h>
#include <libssh/server.h>
#include <libssh/callbacks.h>
#include <openssl/ssl.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <jansson.h>
#include <stdint.h>

// epoll and pipe2: epoll_event is a packed struct the importer handles poorly; these wrappers
// pass plain integers and arrays instead.
int relay_epoll_create(void);
int relay_epoll_ctl(int epfd, int op, int fd, uint32_t events);
int relay_epoll_wait(int epfd, int *fds, uint32_t *events, int max, int timeout_ms);
int relay_pipe_nonblocking(int fds[2]);
// addr: a struct sockaddr_storage (void * keeps <sys/socket.h> out of this module).
int relay_accept_nonblocking(int fd, void *addr, unsigned int *len);
// Linux socket constants (kept here so Swift files that import this module never depend on
// which module clang credits with <sys/socket.h>'s declarations).
enum { RELAY_SOCK_STREAM = 1, RELAY_SOCK_NONBLOCK = 04000, RELAY_SOCK_CLOEXEC = 02000000 };
enum { RELAY_SHUT_WR = 1 };
enum {
    RELAY_EPOLL_ADD = 1, RELAY_EPOLL_DEL = 2, RELAY_EPOLL_MOD = 3,
    RELAY_EPOLLIN = 0x001, RELAY_EPOLLOUT = 0x004, RELAY_EPOLLERR = 0x008, RELAY_EPOLLHUP = 0x010,
    RELAY_EPOLLRDHUP = 0x2000
};
enum { RELAY_EPOLLET = 1u << 31
};

static inline int relay_ssl_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}
static inline unsigned long long relay_ssl_ctx_harden(SSL_CTX *ctx) {
    return (unsigned long long)SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
}
static inline long relay_ssl_ctx_set_partial_write(SSL_CTX *ctx) {
    return SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}
static inline long relay_bio_mem_data(BIO *bio, char **out) { return BIO_get_mem_data(bio, out); }
static inline void relay_openssl_free(void *p) { OPENSSL_free(p); }
static inline long relay_ssl_set_sni(SSL *ssl, const char *name) {
    return SSL_set_tlsext_host_name(ssl, name);
}

static inline int relay_json_type(const json_t *j) { return j ? (int)json_typeof(j) : -1; }
static inline size_t relay_json_indent(size_t n) { return JSON_INDENT(n); }

static inline void relay_ssh_server_callbacks_init(struct ssh_server_callbacks_struct *cb) {
    ssh_callbacks_init(cb);
}
static inline void relay_ssh_callbacks_init(struct ssh_callbacks_struct *cb) {
    ssh_callbacks_init(cb);
}
static inline void relay_ssh_channel_callbacks_init(struct ssh_channel_callbacks_struct *cb) {
    ssh_callbacks_init(cb);
}

#endif
