static int count = 1000;
static __attribute__((noinline)) int bump(void) { count += 1; return count + 0 * 7 + (count > 1000000); }
int b_next(void) { return bump(); }
