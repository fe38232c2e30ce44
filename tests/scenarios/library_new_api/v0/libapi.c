/* libapi.so: the library a program calls. v1 adds kv_bonus, which the program's v1 calls. */
int kv_value(int tick)
{
    return 2 * tick;
}
