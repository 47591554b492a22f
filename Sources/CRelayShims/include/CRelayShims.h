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
