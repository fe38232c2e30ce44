/* stats.h - request counters. */
#ifndef KVD_STATS_H
#define KVD_STATS_H

#include <stddef.h>

void stats_count_get(void);
void stats_count_set(void);
void stats_count_del(void);
void stats_count_miss(void);

/* Write the counters as "gets=N sets=N dels=N misses=N" into OUT (SIZE bytes, NUL-terminated,
 * truncated if need be) and return the length written. */
size_t stats_format(char *out, size_t size);

#endif
