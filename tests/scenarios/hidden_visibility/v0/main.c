/* hidden-visibility: helper is hidden, so a PIE link makes it a local symbol; unchanged other() calls it, and v1 changes it. */
#include <stdio.h>
#include <unistd.h>
#define H __attribute__((visibility("hidden")))
H extern int hcount; H int helper(int); H int stable(int);
__attribute__((noinline)) void step(int t) { hcount++; printf("tick %d hcount %d stable %d V0\n", t, hcount, stable(t)); }
__attribute__((noinline)) void other(int t) { printf("tick %d helper %d\n", t, helper(t)); }
int main(void) { for (int t = 1;; t++) { step(t); other(t); fflush(stdout); usleep(20000); } }
