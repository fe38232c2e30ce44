/* function-pointer-identity: cb holds f's address from before the patch; patched code compares against &f, which must still be the same pointer. */
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int f(int x) { return x + 1000; }
__attribute__((noinline)) int g(int x) { return x + 2; }
int (*cb)(int) = f;
int (*volatile cb2)(int);
__attribute__((noinline)) void step(int t) {
  if (t == 2) cb2 = f;
  printf("tick %d same %d same2 %d cb %d V1\n", t, cb == f, cb2 == f, cb(t));
}
int main(void) { for (int t = 1;; t++) { step(t); fflush(stdout); usleep(20000); } }
