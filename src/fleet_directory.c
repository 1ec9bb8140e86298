/* fleet_directory.c - one directory for the fleet: which node is
 * connected to which broker. Each broker tells the others when one of its
 * nodes joins or leaves (FLEET_DIR on the pair channels: in order, once),
 * and sends its full list to a broker new to it (or back from silence, or
 * asking); a broker gone takes its nodes with it. Offers and node lists
 * are the broker's own nodes and these (mdg_broker_each_node). */
#include "fleet.h"

#include <stdlib.h>
#include <string.h>

typedef struct dir_entry {
    uint8_t pk[MDG_KEY_BYTES];
    fleet_member *home;
    bool stale; /* while a full list is read: not (yet) in it */
    node_sharing sharing;
} dir_entry;

int fleet_dir_init(fleet *f)
{
    return (f->dir = mdg_map_new()) ? 0 : MDG_ENOMEM;
}

void fleet_dir_free(fleet *f)
{
    dir_entry *e;
    while (f->dir && (e = mdg_map_pop(f->dir)) != NULL)
        free(e);
    mdg_map_destroy(&f->dir);
}

fleet_member *fleet_node_home(const fleet *f, const uint8_t pk[MDG_KEY_BYTES])
{
    dir_entry *e = mdg_map_get(f->dir, pk, MDG_KEY_BYTES);
    return e && e->home->up ? e->home : NULL;
}

node_sharing *fleet_node_sharing(const fleet *f, const uint8_t pk[MDG_KEY_BYTES])
{
    dir_entry *e = f ? mdg_map_get(f->dir, pk, MDG_KEY_BYTES) : NULL;
    return e ? &e->sharing : NULL;
}

/* {"add": [pk...]} or {"del": [pk...]} (with "full": true, the whole list). */
static mdg_params *dir_params(const char *key, cbor_item_t *list, bool full)
{
    mdg_params *p = mdg_params_new();
    /* set_item takes the list, and frees it when p is NULL */
    if (mdg_params_set_item(p, key, list) != 0 || (full && mdg_params_set_bool(p, "full", true) != 0)) {
        mdg_params_destroy(&p);
        return NULL;
    }
    return p;
}

static void push_pk(cbor_item_t *list, const uint8_t *pk)
{
    cbor_item_t *b = cbor_build_bytestring(pk, MDG_KEY_BYTES);
    if (b) {
        cbor_array_push(list, b);
        cbor_decref(&b);
    }
}

typedef struct change {
    fleet *f;
    mdg_header h;
    zmq_msg_t params;
} change;

static void send_change(fleet_member *m, void *arg)
{
    change *c = arg;
    fleet_send(c->f, m, &c->h, &c->params, NULL); /* params borrowed: the same for each */
}

/* {key: [pk]} to every member up: made and encoded once for them all. */
static void tell_members(fleet *f, const char *key, const uint8_t pk[MDG_KEY_BYTES])
{
    change c = {.f = f, .h = {.kind = MDG_K_CMD}};
    cbor_item_t *list = f->leaving ? NULL : cbor_new_definite_array(1);
    if (!list)
        return;
    push_pk(list, pk);
    mdg_params *p = dir_params(key, list, false);
    if (p && mdg_header_set_command(&c.h, FLEET_DIR) == 0 && mdg_params_encode(p, &c.params) == 0) {
        fleet_each_member(f, send_change, &c);
        zmq_msg_close(&c.params);
    }
    mdg_params_destroy(&p);
}

void fleet_node_joined(fleet *f, const uint8_t pk[MDG_KEY_BYTES])
{
    tell_members(f, "add", pk);
}

void fleet_node_left(fleet *f, const uint8_t pk[MDG_KEY_BYTES])
{
    tell_members(f, "del", pk);
}

static void collect_local(void *value, void *arg)
{
    push_pk(arg, ((peer *)value)->pk);
}

void fleet_dir_send_full(fleet *f, fleet_member *m)
{
    cbor_item_t *list = cbor_new_definite_array(mdg_map_size(f->b->nodes));
    if (!list)
        return;
    mdg_map_each(f->b->nodes, collect_local, list);
    mdg_params *p = dir_params("add", list, true);
    if (p)
        fleet_send_params(f, m, MDG_K_CMD, 0, 0, FLEET_DIR, p);
}

typedef struct dir_scan {
    fleet_member *home;
    mdg_ptrs found;
} dir_scan;

static void scan_home(void *value, void *arg)
{
    dir_scan *s = arg;
    if (((dir_entry *)value)->home == s->home)
        mdg_ptrs_push(&s->found, value);
}

static void withdraw(fleet *f, dir_entry *e, bool calls)
{
    char who[MDG_KEY_B64_LEN + 1];
    mdg_log(MDG_LOG_INFO, "fleet: node %s withdrawn", pk_short(e->pk, who));
    mdg_map_take(f->dir, e->pk, MDG_KEY_BYTES);
    if (calls)
        broker_drop_node_fwds(f->b, e->pk, e->home); /* its calls fail to their callers */
    free(e);
}

void fleet_dir_forget(fleet *f, fleet_member *m)
{
    dir_scan s = {.home = m};
    mdg_map_each(f->dir, scan_home, &s);
    for (size_t i = 0; i < s.found.n; i++)
        withdraw(f, s.found.v[i], false); /* fleet_route_forget fails its calls */
    mdg_ptrs_free(&s.found);
}

void fleet_dir_receive(fleet *f, fleet_member *m, mdg_inbound *in)
{
    mdg_params *p = NULL;
    char who[MDG_KEY_B64_LEN + 1];
    if (mdg_inbound_take_params(in, &p) != 0) {
        fleet_refuse(f, FLEET_REFUSED_CONTENT, "a directory message from broker %s that does not decode: %s", pk_short(m->pk, who),
                     mdg_last_error());
        return;
    }
    bool full = false;
    mdg_params_get_bool(p, "full", &full);
    cbor_item_t *add = mdg_params_get(p, "add"), *del = mdg_params_get(p, "del");
    if ((add && !cbor_isa_array(add)) || (del && !cbor_isa_array(del))) {
        fleet_refuse(f, FLEET_REFUSED_CONTENT, "a directory message from broker %s with bad lists", pk_short(m->pk, who));
        mdg_params_destroy(&p);
        return;
    }
    /* a full list: what it no longer lists has gone. Its entries are
     * marked, the list clears the marks of those it names, and the marked
     * ones go after it (one pass each, however long the list) */
    dir_scan s = {.home = m};
    if (full) {
        mdg_map_each(f->dir, scan_home, &s);
        for (size_t i = 0; i < s.found.n; i++)
            ((dir_entry *)s.found.v[i])->stale = true;
    }
    for (size_t i = 0; del && i < cbor_array_size(del); i++) {
        cbor_item_t *b = cbor_array_handle(del)[i];
        dir_entry *e = cbor_isa_bytestring(b) && cbor_bytestring_is_definite(b) &&
                               cbor_bytestring_length(b) == MDG_KEY_BYTES
                           ? mdg_map_get(f->dir, cbor_bytestring_handle(b), MDG_KEY_BYTES)
                           : NULL;
        if (e && e->home == m && !e->stale) /* a marked one goes below, unless listed */
            withdraw(f, e, true);
    }
    for (size_t i = 0; add && i < cbor_array_size(add); i++) {
        cbor_item_t *b = cbor_array_handle(add)[i];
        if (!cbor_isa_bytestring(b) || !cbor_bytestring_is_definite(b) || cbor_bytestring_length(b) != MDG_KEY_BYTES)
            continue;
        dir_entry *e = mdg_map_get(f->dir, cbor_bytestring_handle(b), MDG_KEY_BYTES);
        if (e) { /* moved from one broker to another: the newest word wins */
            e->home = m;
            e->stale = false;
            continue;
        }
        if (!(e = calloc(1, sizeof *e)))
            continue; /* the rest may still clear their marks */
        memcpy(e->pk, cbor_bytestring_handle(b), MDG_KEY_BYTES);
        e->home = m;
        if (mdg_map_put(f->dir, e->pk, MDG_KEY_BYTES, e) != 0) {
            free(e);
            continue;
        }
        char node[MDG_KEY_B64_LEN + 1];
        pk_short(e->pk, node);
        mdg_log(MDG_LOG_INFO, "fleet: node %s is at broker %s", node, pk_short(m->pk, who));
    }
    for (size_t i = 0; i < s.found.n; i++)
        if (((dir_entry *)s.found.v[i])->stale)
            withdraw(f, s.found.v[i], true);
    mdg_ptrs_free(&s.found);
    mdg_params_destroy(&p);
}

typedef struct dir_walk {
    const mdg_map *local; /* the broker's own nodes */
    mdg_node_fn fn;
    void *arg;
    size_t n;
} dir_walk;

static void walk_one(void *value, void *arg)
{
    dir_entry *e = value;
    dir_walk *w = arg;
    /* a node that moved here from a broker that died is ours now: the dead
     * one's entry stays until its silence, and must not list it twice */
    if (!e->home->up || mdg_map_get(w->local, e->pk, MDG_KEY_BYTES))
        return;
    w->n++;
    if (w->fn)
        w->fn(e->pk, false, w->arg);
}

size_t fleet_dir_each(const fleet *f, mdg_node_fn fn, void *arg)
{
    dir_walk w = {f->b->nodes, fn, arg, 0};
    mdg_map_each(f->dir, walk_one, &w);
    return w.n;
}
