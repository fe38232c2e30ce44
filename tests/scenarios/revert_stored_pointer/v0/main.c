/* revert-stored-pointer: the patched step() stores &f into handler; after a revert, handler must
 * not point into the unmapped patch. */
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int f(int x) { return x + 1; }
int (*volatile handler)(int);
__attribute__((noinline)) void step(int t) { printf("tick %d V0\n", t); }
__attribute__((noinline)) void fire(int t) { if (handler) printf("fire %d -> %d\n", t, handler(t)); }
int main(void) { for (int t = 1;; t++) { step(t); fire(t); fflush(stdout); usleep(20000); } }
