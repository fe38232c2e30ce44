/* store.h - the key-value store: a fixed-size open-addressing hash table. */
#ifndef KVD_STORE_H
#define KVD_STORE_H

#include <stddef.h>

#define CAPACITY 1024   /* slots in the table: the most keys kvd holds */
#define KEY_SIZE 32     /* bytes of a key, including its terminating NUL */
#define VALUE_SIZE 64   /* bytes of a value, including its terminating NUL */

/* One slot of the table.  Keys and values live inline, so the whole store is one array with no
 * heap behind it. */
struct entry {
    int used;
    char key[KEY_SIZE];
    char value[VALUE_SIZE];
};

enum store_status {
    STORE_OK,
    STORE_NOT_FOUND,
    STORE_FULL,      /* every slot is in use */
    STORE_TOO_LONG,  /* the key or the value does not fit in its slot */
};

/* Set KEY to VALUE, adding the key if it is new. */
enum store_status store_set(const char *key, const char *value);

/* Copy the value of KEY into VALUE. */
enum store_status store_get(const char *key, char value[VALUE_SIZE]);

/* Remove KEY. */
enum store_status store_del(const char *key);

/* Number of keys held. */
size_t store_count(void);

#endif
