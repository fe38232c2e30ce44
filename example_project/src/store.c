/* store.c - the key-value store: open addressing with linear probing in one global array. */
#include "store.h"

#include <stdint.h>
#include <string.h>

/* Global rather than static so that debuggers and hot patches find it by name; only this file
 * touches it. */
struct entry table[CAPACITY];

/* Number of used slots.  A probe stops once it has met this many (see lookup()). */
static size_t live;

/* FNV-1a (32-bit): a few lines, and keys that differ in one byte land far apart. */
static uint32_t hash(const char *key)
{
    uint32_t h = 2166136261u;

    for (const unsigned char *p = (const unsigned char *)key; *p; p++) {
        h ^= *p;
        h *= 16777619u;
    }
    return h;
}

/* The slot holding KEY, or NULL.  Deleting a key clears its slot without leaving a tombstone,
 * so an empty slot does not end a probe: the probe walks on from the key's home slot until it
 * has met every used slot. */
static struct entry *lookup(const char *key)
{
    size_t home = hash(key) % CAPACITY;
    size_t seen = 0;

    for (size_t i = 0; i < CAPACITY && seen < live; i++) {
        struct entry *e = &table[(home + i) % CAPACITY];

        if (!e->used)
            continue;
        seen++;
        if (strncmp(e->key, key, strlen(e->key)) == 0)
            return e;
    }
    return NULL;
}

/* The first unused slot at or after KEY's home slot; the caller checked that one exists. */
static struct entry *free_slot(const char *key)
{
    size_t home = hash(key) % CAPACITY;
    size_t i = 0;

    while (table[(home + i) % CAPACITY].used)
        i++;
    return &table[(home + i) % CAPACITY];
}

/* Whether TEXT, with its NUL, fits in SIZE bytes. */
static int fits(const char *text, size_t size)
{
    return memchr(text, '\0', size) != NULL;
}

enum store_status store_set(const char *key, const char *value)
{
    if (!fits(key, KEY_SIZE) || !fits(value, VALUE_SIZE))
        return STORE_TOO_LONG;

    struct entry *e = lookup(key);

    if (e == NULL) {
        if (live == CAPACITY)
            return STORE_FULL;
        e = free_slot(key);
        e->used = 1;
        memcpy(e->key, key, strlen(key) + 1);
        live++;
    }
    memcpy(e->value, value, strlen(value) + 1);
    return STORE_OK;
}

enum store_status store_get(const char *key, char value[VALUE_SIZE])
{
    const struct entry *e = lookup(key);

    if (e == NULL)
        return STORE_NOT_FOUND;
    memcpy(value, e->value, VALUE_SIZE);
    return STORE_OK;
}

enum store_status store_del(const char *key)
{
    struct entry *e = lookup(key);

    if (e == NULL)
        return STORE_NOT_FOUND;
    /* A free slot is all zeroes, as at startup, so a new key starts from a clean slot. */
    memset(e, 0, sizeof *e);
    live--;
    return STORE_OK;
}

size_t store_count(void)
{
    return live;
}
