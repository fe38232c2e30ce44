static int count = 1000;
static __attribute__((noinline)) int bump(void) { return ++count; }
int b_next(void) { return bump(); }
