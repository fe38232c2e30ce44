/* net.c - accept clients, split what they send into lines, send back the replies.
 *
 * One thread serves every client with poll().  Sockets are non-blocking, so reads and writes may
 * be partial: each client keeps an input buffer (bytes received, up to one request line) and an
 * output buffer (replies not yet sent).  A client that sends requests faster than it reads the
 * replies is not read from until its output buffer has room again. */
#define _POSIX_C_SOURCE 200809L

#include "net.h"

#include "protocol.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_CLIENTS 64
#define OUTPUT_SIZE 4096

struct client {
    int fd;          /* -1 when the slot is free */
    int discarding;  /* the current line was too long: drop it up to its '\n' */
    int eof;         /* the client has sent everything: close once it is answered */
    size_t in_len;
    size_t out_len;
    char in[REQUEST_MAX];
    char out[OUTPUT_SIZE];
};

static struct client clients[MAX_CLIENTS];

static const char busy_reply[] = "ERR server busy\n";
static const char too_long_reply[] = "ERR line too long";

static int set_nonblocking(int fd)
{
    int flags = fcntl(fd, F_GETFL);

    return flags < 0 ? -1 : fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

int net_listen(unsigned port, unsigned *bound)
{
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    socklen_t len = sizeof addr;
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0) {
        perror("kvd: socket");
        return -1;
    }
    /* Lets a restarted kvd bind its port while old connections sit in TIME_WAIT; if it fails,
     * bind() says so when it matters. */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0
        || listen(fd, SOMAXCONN) < 0
        || getsockname(fd, (struct sockaddr *)&addr, &len) < 0
        || set_nonblocking(fd) < 0) {
        fprintf(stderr, "kvd: cannot listen on 127.0.0.1:%u: %s\n", port, strerror(errno));
        close(fd);
        return -1;
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        clients[i].fd = -1;
    *bound = ntohs(addr.sin_port);
    return fd;
}

static void client_close(struct client *c)
{
    close(c->fd);
    c->fd = -1;
}

static size_t output_room(const struct client *c)
{
    return OUTPUT_SIZE - c->out_len;
}

/* Whether the input holds something to act on: a whole line, or a full buffer without one. */
static int has_line(const struct client *c)
{
    return c->in_len == REQUEST_MAX || memchr(c->in, '\n', c->in_len) != NULL;
}

/* Queue REPLY and its '\n'; the caller made sure there is room for REPLY_MAX bytes. */
static void queue_reply(struct client *c, const char *reply, size_t len)
{
    memcpy(c->out + c->out_len, reply, len);
    c->out[c->out_len + len] = '\n';
    c->out_len += len + 1;
}

static void answer(struct client *c, char *line)
{
    char reply[REPLY_MAX];
    size_t len = strlen(line);

    /* Accept "\r\n" line ends too, as telnet and nc -C send them. */
    if (len > 0 && line[len - 1] == '\r')
        line[len - 1] = '\0';
    len = protocol_handle(line, reply, sizeof reply);
    queue_reply(c, reply, len);
}

/* Answer the complete lines received, as long as the output has room for a reply. */
static void answer_lines(struct client *c)
{
    while (output_room(c) >= REPLY_MAX && has_line(c)) {
        char *newline = memchr(c->in, '\n', c->in_len);

        if (newline == NULL) {
            /* A full buffer and no line end: the line is too long.  Say so once and drop it. */
            if (!c->discarding)
                queue_reply(c, too_long_reply, sizeof too_long_reply - 1);
            c->discarding = 1;
            c->in_len = 0;
            continue;
        }
        size_t used = (size_t)(newline - c->in) + 1;

        *newline = '\0';
        if (c->discarding)
            c->discarding = 0;  /* that was the end of the over-long line */
        else
            answer(c, c->in);
        memmove(c->in, c->in + used, c->in_len - used);
        c->in_len -= used;
    }
}

/* Send what the output holds; return -1 if the connection is broken. */
static int flush_output(struct client *c)
{
    size_t sent = 0;

    while (sent < c->out_len) {
        /* MSG_NOSIGNAL: a client that went away is an EPIPE here, not a SIGPIPE killing kvd. */
        ssize_t n = send(c->fd, c->out + sent, c->out_len - sent, MSG_NOSIGNAL);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                return -1;
            break;
        }
        sent += (size_t)n;
    }
    memmove(c->out, c->out + sent, c->out_len - sent);
    c->out_len -= sent;
    return 0;
}

static void receive(struct client *c)
{
    ssize_t n = recv(c->fd, c->in + c->in_len, REQUEST_MAX - c->in_len, 0);

    if (n > 0)
        c->in_len += (size_t)n;
    else if (n == 0)
        c->eof = 1;
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        client_close(c);
}

static void serve(struct client *c, short revents)
{
    if (revents & (POLLERR | POLLNVAL)) {
        client_close(c);
        return;
    }
    if ((revents & (POLLIN | POLLHUP)) && !c->eof && c->in_len < REQUEST_MAX)
        receive(c);
    while (c->fd >= 0) {
        answer_lines(c);
        if (flush_output(c) < 0)
            client_close(c);
        else if (c->out_len > 0 || !has_line(c))
            break;  /* wait for the client to read, or to send more */
    }
    /* A trailing line without its '\n' is not a request: drop it with the connection. */
    if (c->fd >= 0 && c->eof && c->out_len == 0)
        client_close(c);
}

static short wanted_events(const struct client *c)
{
    short events = 0;

    if (c->out_len > 0)
        events |= POLLOUT;
    if (!c->eof && c->in_len < REQUEST_MAX && output_room(c) >= REPLY_MAX)
        events |= POLLIN;
    return events;
}

static struct client *free_client(void)
{
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (clients[i].fd < 0)
            return &clients[i];
    return NULL;
}

static void accept_clients(int listen_fd)
{
    for (;;) {
        int fd = accept(listen_fd, NULL, NULL);

        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return;  /* EAGAIN: none left; anything else (EMFILE...): retry on the next poll */
        }
        struct client *c = free_client();

        if (c == NULL) {
            /* A fresh socket's send buffer is empty: this one send() goes through. */
            send(fd, busy_reply, sizeof busy_reply - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
            close(fd);
            continue;
        }
        if (set_nonblocking(fd) < 0) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->discarding = 0;
        c->eof = 0;
        c->in_len = 0;
        c->out_len = 0;
    }
}

void net_poll(int listen_fd)
{
    struct pollfd fds[MAX_CLIENTS + 1];

    /* fds[0] is the listening socket, fds[1 + i] is clients[i]; poll() skips negative fds. */
    fds[0] = (struct pollfd){ .fd = listen_fd, .events = POLLIN };
    for (int i = 0; i < MAX_CLIENTS; i++)
        fds[1 + i] = (struct pollfd){ .fd = clients[i].fd, .events = wanted_events(&clients[i]) };

    if (poll(fds, MAX_CLIENTS + 1, -1) < 0) {
        if (errno == EINTR)
            return;
        perror("kvd: poll");
        exit(1);
    }
    for (int i = 0; i < MAX_CLIENTS; i++)
        if (clients[i].fd >= 0 && fds[1 + i].revents)
            serve(&clients[i], fds[1 + i].revents);
    if (fds[0].revents & POLLIN)
        accept_clients(listen_fd);
}
