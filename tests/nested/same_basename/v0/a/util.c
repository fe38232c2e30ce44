static int count;
static __attribute__((noinline)) int bump(void) { return ++count; }
int a_next(void) { return bump() * 1; }
