/* main.c - kvd, a small in-memory key-value server (see README.md). */
#define _POSIX_C_SOURCE 200809L

#include "net.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The version comes from a function of its own, not from data main() reads: main() never
 * returns, so it is always on the stack and can never be replaced by a hot patch.  A new
 * release changes this function only, and main() stays byte-identical. */
static const char *__attribute__((noinline)) kvd_version(void)
{
    return "v0";
}

/* Parse a port number (0 to 65535) made of digits only. */
static int parse_port(const char *text, unsigned *port)
{
    char *end;
    unsigned long value;

    if (*text < '0' || *text > '9')
        return -1;  /* strtoul() would accept blanks and a sign */
    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || value > 65535)
        return -1;
    *port = (unsigned)value;
    return 0;
}

/* The store lives in memory only, so there is nothing to save on the way out; _exit() is
 * async-signal-safe where exit() is not. */
static void on_terminate(int sig)
{
    (void)sig;
    _exit(0);
}

static void install_signal_handlers(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_terminate;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
}

int main(int argc, char **argv)
{
    unsigned port = 0;
    int listen_fd;

    if (argc > 2 || (argc == 2 && parse_port(argv[1], &port) < 0)) {
        fputs("usage: kvd [PORT]\n", stderr);
        return 2;
    }
    install_signal_handlers();
    listen_fd = net_listen(port, &port);
    if (listen_fd < 0)
        return 1;
    printf("kvd %s listening on 127.0.0.1:%u\n", kvd_version(), port);
    fflush(stdout);

    /* The event loop.  Like any server's, it never returns: SIGTERM or SIGINT end kvd. */
    for (;;)
        net_poll(listen_fd);
}
