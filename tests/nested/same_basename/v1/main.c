/* same-basename: src a/util.c and b/util.c both define static count and bump(); v1 changes b's. The
 * executable's symbol table calls both groups util.c: the patch must bind b's count, not a's. */
#include <stdio.h>
#include <unistd.h>
int a_next(void); int b_next(void);
int main(void) { for (int t = 1;; t++) { int a = a_next(); int b = b_next(); printf("tick %d a %d b %d\n", t, a, b); fflush(stdout); usleep(20000); } }
