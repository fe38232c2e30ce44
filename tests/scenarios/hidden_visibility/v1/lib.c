#define H __attribute__((visibility("hidden")))
H int hcount;
H __attribute__((noinline)) int helper(int x) { return x + 500; }
H __attribute__((noinline)) int stable(int x) { return x * 10; }
