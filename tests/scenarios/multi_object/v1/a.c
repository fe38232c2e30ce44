#include "parts.h"

int __attribute__((noinline)) part_a(int x)
{
    return x * 3 + (x >> 2) + 1;
}
