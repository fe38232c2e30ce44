#include "parts.h"

int __attribute__((noinline)) part_b(int x)
{
    return x * 200 + (x >> 2);
}
