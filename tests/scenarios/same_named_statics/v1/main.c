/* same-named-statics: two inlined helpers each keep a static counter; v1 adds a user of one of them, and both must keep their live values. */
#include <stdio.h>
#include <unistd.h>
static inline int next_id(void) { static int counter; return ++counter; }
static inline int next_ev(void) { static int counter = 1000; return ++counter; }
__attribute__((noinline)) int other(int t) { return t > 1000000 ? next_ev() : 0; }
__attribute__((noinline)) void step(int t) { int a = next_id(); int b = next_ev(); printf("tick %d id %d ev %d o %d\n", t, a, b, other(t)); }
int main(void) { for (int t = 1;; t++) { step(t); fflush(stdout); usleep(20000); } }
