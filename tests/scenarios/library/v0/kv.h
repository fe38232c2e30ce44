/* libkv.so: the project's own shared library */
long kv_compute(long x);
long kv_calls(void);
long kv_thread_calls(void);
long kv_total(void);
long kv_hits(void);
long kv_misses(void);
