// libssh as relay builds it (scripts/libssh/build, DESIGN D1): Debian's source package with our
// host-certificate patch, static, linked as librelayssh.a. `include/libssh` points into the
// build cache (.build-libssh/current), so these are never the system's /usr/include/libssh.
#ifndef CLIBSSH_H
#define CLIBSSH_H

#if !__has_include(<libssh/relay_build.h>)
#error "libssh is not built yet: run ./scripts/setup (it builds libssh with relay's patch, DESIGN D1)"
#endif

#include <libssh/libssh.h>
#include <libssh/server.h>
#include <libssh/callbacks.h>
#include <libssh/relay_build.h>

#ifndef LIBSSH_RELAY_HOST_CERTIFICATES
#error "this libssh lacks relay's host-certificate patch: re-run ./scripts/setup"
#endif

/// What `relay version` prints about libssh: the Debian version built, whether host-certificate
/// presentation is compiled in, and the socket read size (MAX_BUF_SIZE).
const char *relay_libssh_debian_version(void);
int relay_libssh_host_certificates(void);
int relay_libssh_max_buf_size(void);

#endif
