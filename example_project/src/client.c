/* client.c - kv, the command-line client of kvd.
 *
 *   kv PORT CMD [ARGS...]   send one request (CMD and ARGS joined by spaces), print the reply
 *   kv PORT -               send each line of stdin, print each reply
 *
 * Exit status: 0 when every request got its reply, 1 on a connection error, 2 on a usage error. */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define LINE_SIZE 1024  /* longer than any request kvd accepts or reply it sends */

/* Replies arrive as a byte stream: the reader keeps what came after the current line. */
struct reader {
    int fd;
    size_t len;
    char buf[LINE_SIZE];
};

static int usage(void)
{
    fputs("usage: kv PORT CMD [ARGS...]\n"
          "       kv PORT -    (one request per line of stdin)\n", stderr);
    return 2;
}

static int parse_port(const char *text, unsigned *port)
{
    char *end;
    unsigned long value;

    if (*text < '0' || *text > '9')
        return -1;  /* strtoul() would accept blanks and a sign */
    errno = 0;
    value = strtoul(text, &end, 10);
    if (errno != 0 || *end != '\0' || value == 0 || value > 65535)
        return -1;
    *port = (unsigned)value;
    return 0;
}

static int connect_to(unsigned port)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        fprintf(stderr, "kv: cannot connect to 127.0.0.1:%u: %s\n", port, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* Send all LEN bytes: send() may take fewer. */
static int send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "kv: send: %s\n", strerror(errno));
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Read the next line, without its '\n', into LINE (LINE_SIZE bytes). */
static int read_line(struct reader *r, char line[LINE_SIZE])
{
    for (;;) {
        char *newline = memchr(r->buf, '\n', r->len);

        if (newline != NULL) {
            size_t len = (size_t)(newline - r->buf);

            memcpy(line, r->buf, len);
            line[len] = '\0';
            r->len -= len + 1;
            memmove(r->buf, newline + 1, r->len);
            return 0;
        }
        if (r->len == sizeof r->buf) {
            fputs("kv: reply line too long\n", stderr);
            return -1;
        }
        ssize_t n = recv(r->fd, r->buf + r->len, sizeof r->buf - r->len, 0);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "kv: connection closed before the reply%s%s\n",
                    n < 0 ? ": " : "", n < 0 ? strerror(errno) : "");
            return -1;
        }
        r->len += (size_t)n;
    }
}

static int print_reply(struct reader *r)
{
    char line[LINE_SIZE];

    if (read_line(r, line) < 0)
        return -1;
    puts(line);
    /* Flush each reply: a script may wait for it before writing its next request. */
    fflush(stdout);
    return 0;
}

/* kv PORT CMD [ARGS...] */
static int run_request(struct reader *r, int argc, char **argv)
{
    char request[LINE_SIZE];
    size_t len = 0;

    for (int i = 0; i < argc; i++) {
        size_t n = strlen(argv[i]);

        if (strchr(argv[i], '\n') != NULL || len + n + 2 > sizeof request) {
            fprintf(stderr, "kv: a request is one line of at most %d bytes\n", LINE_SIZE - 2);
            return 2;
        }
        if (i > 0)
            request[len++] = ' ';
        memcpy(request + len, argv[i], n);
        len += n;
    }
    request[len++] = '\n';
    if (send_all(r->fd, request, len) < 0 || print_reply(r) < 0)
        return 1;
    return 0;
}

/* kv PORT -: lines of any length are sent piece by piece; each gets one reply. */
static int run_script(struct reader *r)
{
    char chunk[LINE_SIZE];

    while (fgets(chunk, sizeof chunk, stdin) != NULL) {
        size_t len = strlen(chunk);
        int line_ends = len > 0 && chunk[len - 1] == '\n';

        if (send_all(r->fd, chunk, len) < 0)
            return 1;
        if (!line_ends && feof(stdin)) {
            /* The last line lacked its '\n': complete it. */
            if (send_all(r->fd, "\n", 1) < 0)
                return 1;
            line_ends = 1;
        }
        if (line_ends && print_reply(r) < 0)
            return 1;
    }
    if (ferror(stdin)) {
        perror("kv: stdin");
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct reader r = { .len = 0 };
    unsigned port;
    int status;

    if (argc < 3 || parse_port(argv[1], &port) < 0)
        return usage();
    if ((r.fd = connect_to(port)) < 0)
        return 1;
    if (strcmp(argv[2], "-") == 0 && argc == 3)
        status = run_script(&r);
    else
        status = run_request(&r, argc - 2, argv + 2);
    close(r.fd);
    return status;
}
