/* v2 of the library: value = 4 * x. Its state is static: what a patch must keep. */
#include "kv.h"

static long calls;
/* initial-exec: the library's TLS block sits at a fixed offset from the thread pointer */
#ifndef KV_TLS_MODEL
#define KV_TLS_MODEL "initial-exec"
#endif
static __thread long thread_calls __attribute__((tls_model(KV_TLS_MODEL)));

struct kv_stats { long hits; long total; };
/* a global of the library: its own code reaches it through its GOT (it could be interposed) */
struct kv_stats kv_stats;

long kv_compute(long x)
{
    calls++;
    thread_calls++;
    kv_stats.hits++;
    kv_stats.total += x;
    return x * 4;
}

long kv_calls(void) { return calls; }
long kv_thread_calls(void) { return thread_calls; }
long kv_total(void) { return kv_stats.total; }
long kv_hits(void) { return kv_stats.hits; }
long kv_misses(void) { return -1; }
