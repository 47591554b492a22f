// Build facts of the linked libssh (written by scripts/libssh/build into relay_build.h).
#include "CLibSSH.h"

const char *relay_libssh_debian_version(void) { return RELAY_LIBSSH_DEBIAN_VERSION; }
int relay_libssh_host_certificates(void) { return LIBSSH_RELAY_HOST_CERTIFICATES; }
int relay_libssh_max_buf_size(void) { return RELAY_LIBSSH_MAX_BUF_SIZE; }
