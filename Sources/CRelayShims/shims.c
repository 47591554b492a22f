#define _GNU_SOURCE
#include "CRelayShims.h"
#include <sys/epoll.h>
#include <unistd.h>
#include <fcntl.h>
#include <sys/socket.h>

int relay_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int relay_epoll_ctl(int epfd, int op, int fd, uint32_t events) {
    struct epoll_event ev = { .events = events, .data = { .fd = fd } };
    int cop = op == RELAY_EPOLL_ADD ? EPOLL_CTL_ADD : op == RELAY_EPOLL_DEL ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    return epoll_ctl(epfd, cop, fd, &ev);
}

int relay_epoll_wait(int epfd, int *fds, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) { fds[i] = evs[i].data.fd; events[i] = evs[i].events; }
    return n;
}

int relay_pipe_nonblocking(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

int relay_accept_nonblocking(int fd, void *addr, unsigned int *len) {
    socklen_t l = *len;
    int r = accept4(fd, (struct sockaddr *)addr, &l, SOCK_NONBLOCK | SOCK_CLOEXEC);
    *len = l;
    return r;
}
