/* stats.c - request counters. */
#include "stats.h"

#include <stdio.h>

struct stats {
    unsigned long gets;    /* GET requests */
    unsigned long sets;    /* SET requests that stored their value */
    unsigned long dels;    /* DEL requests */
    unsigned long misses;  /* GET and DEL requests whose key was not there */
};

/* Global rather than static so that debuggers and hot patches find it by name; only this file
 * touches it. */
struct stats stats;

void stats_count_get(void)
{
    stats.gets++;
}

void stats_count_set(void)
{
    stats.sets++;
}

void stats_count_del(void)
{
    stats.dels++;
}

void stats_count_miss(void)
{
    stats.misses++;
}

size_t stats_format(char *out, size_t size)
{
    int n = snprintf(out, size, "gets=%lu sets=%lu dels=%lu misses=%lu",
                     stats.gets, stats.sets, stats.dels, stats.misses);

    if (n < 0 || size == 0)
        return 0;
    return (size_t)n < size ? (size_t)n : size - 1;
}
