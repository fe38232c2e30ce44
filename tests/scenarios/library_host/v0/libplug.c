/* libplug.so: a plugin of the host program; v1 calls back into the host's API */
long plug_run(long x)
{
    return x + 1;
}
