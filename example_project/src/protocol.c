/* protocol.c - parse a request line, run its command, format the reply line. */
#include "protocol.h"

#include "stats.h"
#include "store.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define NOT_FOUND_REPLY "NOT_FOUND"

/* A request line split at single spaces: the command, then the key, then the value, which is the
 * rest of the line and may itself hold spaces.  Absent fields are NULL. */
struct request {
    const char *command;
    const char *key;
    const char *value;
};

struct command {
    const char *name;
    int args;  /* fields after the command: 0, 1 (key) or 2 (key and value) */
    size_t (*run)(const struct request *req, char *reply, size_t size);
};

/* snprintf() into REPLY, returning the length actually written. */
__attribute__((format(printf, 3, 4)))
static size_t reply_with(char *reply, size_t size, const char *format, ...)
{
    va_list ap;
    int n;

    va_start(ap, format);
    n = vsnprintf(reply, size, format, ap);
    va_end(ap);
    if (n < 0 || size == 0)
        return 0;
    return (size_t)n < size ? (size_t)n : size - 1;
}

static size_t run_get(const struct request *req, char *reply, size_t size)
{
    char value[VALUE_SIZE];

    stats_count_get();
    if (store_get(req->key, value) != STORE_OK) {
        stats_count_miss();
        return reply_with(reply, size, NOT_FOUND_REPLY);
    }
    return reply_with(reply, size, "VALUE %s", value);
}

static size_t run_set(const struct request *req, char *reply, size_t size)
{
    switch (store_set(req->key, req->value)) {
    case STORE_OK:
        stats_count_set();
        return reply_with(reply, size, "OK");
    case STORE_FULL:
        return reply_with(reply, size, "ERR store full");
    default:
        return reply_with(reply, size, "ERR too long");
    }
}

static size_t run_del(const struct request *req, char *reply, size_t size)
{
    stats_count_del();
    if (store_del(req->key) != STORE_OK) {
        stats_count_miss();
        return reply_with(reply, size, NOT_FOUND_REPLY);
    }
    return reply_with(reply, size, "OK");
}

static size_t run_stats(const struct request *req, char *reply, size_t size)
{
    char counters[REPLY_MAX];

    (void)req;
    stats_format(counters, sizeof counters);
    return reply_with(reply, size, "STATS %s keys=%zu", counters, store_count());
}

static size_t run_ping(const struct request *req, char *reply, size_t size)
{
    (void)req;
    return reply_with(reply, size, "PONG");
}

static const struct command commands[] = {
    { "GET", 1, run_get },
    { "SET", 2, run_set },
    { "DEL", 1, run_del },
    { "STATS", 0, run_stats },
    { "PING", 0, run_ping },
};

static void split(char *line, struct request *req)
{
    char *space;

    req->command = line;
    req->key = NULL;
    req->value = NULL;
    if ((space = strchr(line, ' ')) == NULL)
        return;
    *space = '\0';
    req->key = space + 1;
    if ((space = strchr(space + 1, ' ')) == NULL)
        return;
    *space = '\0';
    req->value = space + 1;
}

static int count_args(const struct request *req)
{
    return req->key == NULL ? 0 : req->value == NULL ? 1 : 2;
}

size_t protocol_handle(char *line, char *reply, size_t size)
{
    struct request req;

    split(line, &req);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct command *cmd = &commands[i];

        if (strcmp(req.command, cmd->name) != 0)
            continue;
        if (count_args(&req) != cmd->args)
            return reply_with(reply, size, "ERR wrong number of arguments");
        return cmd->run(&req, reply, size);
    }
    return reply_with(reply, size, "ERR unknown command");
}
