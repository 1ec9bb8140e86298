/* bench_main.c - the benchmark runner: runs every scenario against its
 * baselines round after round, prints one table (medians, ratios, targets)
 * and writes results.json. See bench/README.md.
 *
 *   mdg_bench [--runs N] [--secs S] [--sessions N] [--only LIST] [--impl LIST]
 *             [--nats URL] [--nats-tls URL --nats-ca CERT]
 *             [--json FILE] [--table FILE]
 *   --only: comma-separated of rtt,tput,node,fleet,bulk,connect,scale,fairness
 *   --impl: comma-separated of mdg,zmq,nats,tls (to profile one of them)
 *
 * (mdg_bench serve-mdg / serve-zmq are the scale scenario's child servers.) */
#include "bench.h"

#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

bench_cfg cfg = {.secs = 1.0, .warm = 0.2, .runs = 3, .sessions = 10000};

#define MAX_RUNS 15

enum { V_MDG, V_ZMQ, V_NATS, V_TLS, NV };
static const char *const vname[NV] = {"libmessidge", "zmq CURVE", "NATS", "NATS TLS"};
static const char *const vkey[NV] = {"libmessidge", "zmq_curve", "nats", "nats_tls"};

/* A group: one scenario measured by up to four implementations. */
typedef struct group {
    const char *id, *title, *only;
    spec s;
    bool has[NV];
    int nats_from; /* reuse NATS figures of this group (NATS has one path) */
    const char *also; /* another --only word that runs it (a target's reference) */
} group;

/* What each group measured, by group index. */
typedef struct measured {
    bres run[NV][MAX_RUNS];
    int nrun[NV];
    bres med[NV]; /* medians, or the first reason for n/a */
} measured;

#define ALL {true, true, true, true}
#define OURS {true, true, false, false}
#define MDG_ONLY {true, false, false, false}
static group groups[] = {
    {"broker_rtt", "broker RTT, 64 B", "rtt", {K_RTT, P_BROKER, 1, 0, false, O_NONE, false}, ALL, -1, NULL},
    {"broker_tput1", "broker pipelined, 1 client", "tput", {K_TPUT, P_BROKER, 1, 0, false, O_NONE, false}, ALL, -1, NULL},
    {"broker_tput8", "broker pipelined, 8 clients", "tput", {K_TPUT, P_BROKER, 8, 0, false, O_NONE, false}, ALL, -1, NULL},
    {"node_rtt", "node RTT, 64 B", "node", {K_RTT, P_NODE, 1, 0, false, O_NONE, false}, OURS, 0, "fleet"},
    {"node_tput1", "node pipelined, 1 client", "node", {K_TPUT, P_NODE, 1, 0, false, O_NONE, false}, OURS, 1, "fleet"},
    {"node_tput8", "node pipelined, 8 clients", "node", {K_TPUT, P_NODE, 8, 0, false, O_NONE, false}, OURS, 2, NULL},
    {"node_bulk", "bulk 1 MiB via node", "bulk", {K_RTT, P_NODE, 1, BULK_BYTES, false, O_NONE, false}, ALL, -1, NULL},
    {"broker_bulk", "bulk 1 MiB via broker", "bulk", {K_RTT, P_BROKER, 1, BULK_BYTES, false, O_NONE, false}, OURS, 6, NULL},
    /* the user at broker A, the node at broker B of a fleet (docs/fleet.md) */
    {"fleet_rtt", "fleet node RTT, 64 B", "fleet", {K_RTT, P_NODE, 1, 0, false, O_NONE, true}, MDG_ONLY, -1, NULL},
    {"fleet_tput1", "fleet node pipelined, 1 client", "fleet", {K_TPUT, P_NODE, 1, 0, false, O_NONE, true},
     MDG_ONLY, -1, NULL},
    {"connect", "connect (new session)", "connect", {K_CONNECT, P_BROKER, 0, 0, false, O_NONE, false}, OURS, -1, NULL},
    /* fairness: the normal user's node calls alone, then beside another user */
    {"fair_alone", "alone", "fairness", {K_FAIR, P_NODE, 1, 0, false, O_NONE, false}, MDG_ONLY, -1, NULL},
    {"fair_flood", "beside a flooder", "fairness", {K_FAIR, P_NODE, 1, 0, false, O_FLOOD, false}, MDG_ONLY, -1, NULL},
    {"fair_stall", "beside a stalled reader", "fairness", {K_FAIR, P_NODE, 1, 0, false, O_STALL, false}, MDG_ONLY, -1, NULL},
};
#define NGROUPS ((int)(sizeof groups / sizeof groups[0]))
static measured meas[NGROUPS];

/* Whether `what` is in the comma-separated list (NULL = everything). */
static bool in_list(const char *list, const char *what)
{
    if (!list)
        return true;
    size_t n = strlen(what);
    for (const char *p = list; (p = strstr(p, what)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
            return true;
    return false;
}

static bool selected(const char *what)
{
    return in_list(cfg.only, what);
}

static bool group_selected(const group *g)
{
    return selected(g->only) || (g->also && cfg.only && in_list(cfg.only, g->also));
}

/* A group's index, by its id (which must exist). */
static int group_of(const char *id)
{
    int i = 0;
    while (i < NGROUPS - 1 && strcmp(groups[i].id, id) != 0)
        i++;
    return i;
}

static const bres *med_of(const char *id, int v)
{
    return &meas[group_of(id)].med[v];
}

/* --impl: only these implementations (for profiling one of them). */
static const char *impl;
static const char *const vshort[NV] = {"mdg", "zmq", "nats", "tls"};

static bres call_variant(const group *g, int v)
{
    spec s = g->s;
    s.tls = v == V_TLS;
    switch (v) {
    case V_MDG: return mdg_run(&s);
    case V_ZMQ: return zmq_run(&s);
    default: return nats_run(&s);
    }
}

/* Median of each field over the runs; n/a if any run was. */
static void take_medians(int gi)
{
    const group *g = &groups[gi];
    measured *M = &meas[gi];
    for (int v = 0; v < NV; v++) {
        bres *m = &M->med[v];
        *m = na("not measured");
        if (!g->has[v] || !M->nrun[v])
            continue;
        double rate[MAX_RUNS], p50[MAX_RUNS], p99[MAX_RUNS], fsent[MAX_RUNS], fsecs[MAX_RUNS];
        bres sum = {0}; /* fairness: calls and failures of all runs, the longest block */
        int n = 0;
        for (int i = 0; i < M->nrun[v]; i++) {
            bres *r = &M->run[v][i];
            if (!r->ok) {
                *m = *r;
                n = -1;
                break;
            }
            rate[n] = r->rate;
            p50[n] = r->p50;
            fsent[n] = (double)r->other_sent;
            fsecs[n] = r->flood_secs;
            p99[n++] = r->p99;
            sum.calls += r->calls;
            sum.failed += r->failed;
            sum.block_ms = r->block_ms > sum.block_ms ? r->block_ms : sum.block_ms;
        }
        if (n > 0)
            *m = (bres){.ok = true, .rate = median(rate, n), .p50 = median(p50, n), .p99 = median(p99, n),
                        .calls = sum.calls, .failed = sum.failed, .block_ms = sum.block_ms,
                        .other_sent = (long)median(fsent, n), .flood_secs = median(fsecs, n)};
    }
    if (g->nats_from >= 0) {
        M->med[V_NATS] = meas[g->nats_from].med[V_NATS];
        M->med[V_TLS] = meas[g->nats_from].med[V_TLS];
    }
}

/* --------------------------------------------------------- the figures */

enum { HIGHER, LOWER }; /* which way is better */

typedef struct line {
    char id[48], label[64];
    const char *unit;
    int better;
    double v[NV]; /* NAN = n/a */
} line;

static line lines[64];
static int nlines;
static char notes[32][240];
static int nnotes;

static void add_line(int gi, const char *suffix, const char *label, const char *unit,
                     int better, int field)
{
    const group *g = &groups[gi];
    line *l = &lines[nlines++];
    snprintf(l->id, sizeof l->id, "%s%s", g->id, suffix);
    snprintf(l->label, sizeof l->label, "%s", label);
    l->unit = unit;
    l->better = better;
    for (int v = 0; v < NV; v++) {
        const bres *m = &meas[gi].med[v];
        l->v[v] = !m->ok ? NAN : field == 0 ? m->rate : field == 1 ? m->p50 : m->p99;
    }
}

static void build_lines(void)
{
    for (int i = 0; i < NGROUPS; i++) {
        const group *g = &groups[i];
        const measured *M = &meas[i];
        if (!group_selected(g))
            continue;
        char label[64];
        switch (g->s.kind) {
        case K_RTT:
            if (g->s.bulk) {
                add_line(i, "", g->title, "MB/s", HIGHER, 0);
                break;
            }
            add_line(i, ".calls", g->title, "calls/s", HIGHER, 0);
            snprintf(label, sizeof label, "%s, p50", g->title);
            add_line(i, ".p50", label, "us", LOWER, 1);
            snprintf(label, sizeof label, "%s, p99", g->title);
            add_line(i, ".p99", label, "us", LOWER, 2);
            break;
        case K_TPUT: add_line(i, "", g->title, "replies/s", HIGHER, 0); break;
        case K_FAIR: break; /* a block of its own (print_fairness) */
        default:
            add_line(i, ".rate", g->title, "hs/s", HIGHER, 0);
            snprintf(label, sizeof label, "%s, p50", g->title);
            add_line(i, ".p50", label, "us", LOWER, 1);
        }
        for (int v = 0; v < NV; v++)
            if (g->has[v] && !M->med[v].ok && nnotes < 32 &&
                strcmp(M->med[v].why, "not measured") != 0)
                snprintf(notes[nnotes++], sizeof notes[0], "%s / %s: n/a (%s)", g->title, vname[v],
                         M->med[v].why);
    }
}

static const line *find_line(const char *id)
{
    for (int i = 0; i < nlines; i++)
        if (strcmp(lines[i].id, id) == 0)
            return &lines[i];
    return NULL;
}

/* ----------------------------------------------------------- targets */

typedef struct target {
    char text[96], value[64];
    const char *result; /* PASS, FAIL, n/a */
} target;

static target targets[32];
static int ntargets;

/* The ratio a/b compared with limit: max (ratio <= limit) or min (>=);
 * n/a when either is (NAN) or b is 0. */
static void target_of(const char *text, double a, double b, double limit, bool max)
{
    target *t = &targets[ntargets++];
    snprintf(t->text, sizeof t->text, "%s", text);
    if (isnan(a) || isnan(b) || b == 0) {
        t->result = "n/a";
        snprintf(t->value, sizeof t->value, "n/a");
        return;
    }
    double r = a / b;
    snprintf(t->value, sizeof t->value, "%.2fx", r);
    t->result = (max ? r <= limit : r >= limit) ? "PASS" : "FAIL";
}

/* Implementation a over implementation b on one line. */
static void target_ratio(const char *text, const char *id, int a, int b, double limit, bool max)
{
    const line *l = find_line(id);
    target_of(text, l ? l->v[a] : NAN, l ? l->v[b] : NAN, limit, max);
}

/* libmessidge's figure on line a over its figure on line b. */
static void target_between(const char *text, const char *a, const char *b, double limit, bool max)
{
    const line *la = find_line(a), *lb = find_line(b);
    target_of(text, la ? la->v[V_MDG] : NAN, lb ? lb->v[V_MDG] : NAN, limit, max);
}

static const char *num(char *buf, size_t len, double v);

/* Fairness: the normal user's p99 beside the other user within limit x
 * its p99 alone, and none of its calls failed. */
static void target_fair(const char *text, const char *id, double limit)
{
    const bres *a = med_of("fair_alone", V_MDG), *w = med_of(id, V_MDG);
    target *t = &targets[ntargets++];
    snprintf(t->text, sizeof t->text, "%s", text);
    if (!a->ok || !w->ok || isnan(a->p99) || isnan(w->p99) || a->p99 <= 0) {
        t->result = "n/a";
        snprintf(t->value, sizeof t->value, "n/a");
        return;
    }
    double r = w->p99 / a->p99;
    snprintf(t->value, sizeof t->value, "%.2fx, %ld of %ld calls failed", r, w->failed, w->calls);
    t->result = r <= limit && w->failed == 0 ? "PASS" : "FAIL";
}

static void build_targets(const scale_res *sc, bool scale_ran)
{
    /* issue #13's targets, each a ratio measured in this run */
    target_ratio("broker pipelined 1 client >= 1.0x NATS TLS", "broker_tput1", V_MDG, V_TLS, 1.0, false);
    target_ratio("broker pipelined 8 clients >= 1.0x NATS TLS", "broker_tput8", V_MDG, V_TLS, 1.0, false);
    target_ratio("node pipelined 1 client >= 1.0x NATS TLS", "node_tput1", V_MDG, V_TLS, 1.0, false);
    target_ratio("node pipelined 8 clients >= 1.0x NATS TLS", "node_tput8", V_MDG, V_TLS, 1.0, false);
    target_ratio("broker RTT p50 <= 1.25x raw zmq CURVE", "broker_rtt.p50", V_MDG, V_ZMQ, 1.25, true);
    target_ratio("node RTT p50 <= 1.0x NATS TLS", "node_rtt.p50", V_MDG, V_TLS, 1.0, true);
    target_ratio("bulk 1 MiB via node >= 1.0x raw zmq relay", "node_bulk", V_MDG, V_ZMQ, 1.0, false);
    target_ratio("bulk 1 MiB via node >= 1.0x NATS TLS", "node_bulk", V_MDG, V_TLS, 1.0, false);
    target_ratio("connect (new session) p50 <= 1.1x raw zmq", "connect.p50", V_MDG, V_ZMQ, 1.1, true);
    /* issue #16's: the user and the node at two brokers of a fleet */
    if (selected("fleet")) {
        target_between("fleet node RTT p50 <= 2.0x one broker", "fleet_rtt.p50", "node_rtt.p50", 2.0, true);
        target_between("fleet node pipelined >= 0.5x one broker", "fleet_tput1", "node_tput1", 0.5, false);
    }
    if (selected("fairness")) {
        target_fair("fairness p99 beside a flooder <= 2.0x alone", "fair_flood", 2.0);
        target_fair("fairness p99 beside a stalled reader <= 2.0x alone", "fair_stall", 2.0);
    }
    target *t = &targets[ntargets++];
    snprintf(t->text, sizeof t->text, "broker RSS < 20 KiB per idle session");
    if (scale_ran && sc->ok) {
        snprintf(t->value, sizeof t->value, "%.1f KiB (%d sessions)", sc->mdg_kib, sc->opened);
        t->result = sc->mdg_kib < 20 ? "PASS" : "FAIL";
    } else {
        snprintf(t->value, sizeof t->value, "n/a");
        t->result = "n/a";
    }
}

/* ----------------------------------------------------------- output */

static FILE *table_file;

static void out(const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 1, 2)))
#endif
    ;
static void out(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    if (table_file) {
        va_start(ap, fmt);
        vfprintf(table_file, fmt, ap);
        va_end(ap);
    }
}

static const char *num(char *buf, size_t len, double v)
{
    if (isnan(v))
        snprintf(buf, len, "n/a");
    else if (v >= 1000)
        snprintf(buf, len, "%.0f", v);
    else if (v >= 10)
        snprintf(buf, len, "%.1f", v);
    else
        snprintf(buf, len, "%.2f", v);
    return buf;
}

static const char *ratio(char *buf, size_t len, double a, double b)
{
    if (isnan(a) || isnan(b) || b == 0)
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, "%.2fx", a / b);
    return buf;
}

typedef struct machine {
    char date[32], cpu[128], kernel[160];
    long cores;
} machine;

static void machine_info(machine *m)
{
    time_t now = time(NULL);
    strftime(m->date, sizeof m->date, "%Y-%m-%d %H:%M UTC", gmtime(&now));
    snprintf(m->cpu, sizeof m->cpu, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    while (f && fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (strncmp(line, "model name", 10) == 0 && c) {
            snprintf(m->cpu, sizeof m->cpu, "%s", c + 2);
            m->cpu[strcspn(m->cpu, "\n")] = '\0';
            break;
        }
    }
    if (f)
        fclose(f);
    struct utsname u;
    if (uname(&u) == 0)
        snprintf(m->kernel, sizeof m->kernel, "%s %s", u.sysname, u.release);
    m->cores = sysconf(_SC_NPROCESSORS_ONLN);
}

/* The fairness rows: the normal user's p50 and p99 alone and beside the
 * other user, with what the other side did. */
static const char *const fair_ids[] = {"fair_alone", "fair_flood", "fair_stall"};

static void print_fairness(void)
{
    const bres *alone = med_of("fair_alone", V_MDG);
    char a[32], b[32], label[64], more[200];
    for (int i = 0; i < 3; i++) {
        const bres *m = med_of(fair_ids[i], V_MDG);
        const char *title = groups[group_of(fair_ids[i])].title;
        if (!m->ok) {
            snprintf(label, sizeof label, "fairness: %s", title);
            out("%-38s n/a (%s)\n", label, m->why);
            continue;
        }
        snprintf(label, sizeof label, "fairness: %s, p50", title);
        out("%-38s %-9s %11s %11s %8s   (%ld of %ld calls failed: no answer in %d ms, or refused)\n",
            label, "us", num(a, sizeof a, m->p50), "-", "-", m->failed, m->calls, FAIR_TIMEOUT_MS);
        snprintf(label, sizeof label, "fairness: %s, p99", title);
        ratio(b, sizeof b, m->p99, alone->ok ? alone->p99 : NAN);
        if (i == 0)
            snprintf(more, sizeof more, "the normal user's blocking %s calls, no other user", NODE_COMMAND);
        else if (i == 1)
            snprintf(more, sizeof more, "%s alone; flooder: %ld calls sent in %.2f s, no reply read", b,
                     m->other_sent, m->flood_secs);
        else
            snprintf(more, sizeof more, "%s alone; stream: %ld replies, longest mdg_msg_reply_more %.1f ms",
                     b, m->other_sent, m->block_ms);
        out("%-38s %-9s %11s %11s %8s   (%s)\n", label, "us", num(a, sizeof a, m->p99), "-", "-", more);
    }
}

static void print_table(const machine *m, const scale_res *sc, bool scale_ran)
{
    char a[32], b[32], c[32], d[32], e[32], f[32];
    int maj, min, pat;
    zmq_version(&maj, &min, &pat);
    out("libmessidge benchmarks, %s; %s, %ld cores, %s; libzmq %d.%d.%d\n", m->date, m->cpu, m->cores,
        m->kernel, maj, min, pat);
    out("median of %d runs of %.1f s each (after %.1f s warm-up); ratios are libmessidge / baseline "
        "(for us lower is better)\n\n",
        cfg.runs, cfg.secs, cfg.warm);
    out("%-38s %-9s %11s %11s %8s %11s %11s %8s\n", "figure", "unit", vname[V_MDG], vname[V_ZMQ],
        "mdg/zmq", vname[V_NATS], vname[V_TLS], "mdg/TLS");
    for (int i = 0; i < nlines; i++) {
        const line *l = &lines[i];
        out("%-38s %-9s %11s %11s %8s %11s %11s %8s\n", l->label, l->unit, num(a, sizeof a, l->v[V_MDG]),
            num(b, sizeof b, l->v[V_ZMQ]), ratio(c, sizeof c, l->v[V_MDG], l->v[V_ZMQ]),
            num(d, sizeof d, l->v[V_NATS]), num(e, sizeof e, l->v[V_TLS]),
            ratio(f, sizeof f, l->v[V_MDG], l->v[V_TLS]));
    }
    if (scale_ran) {
        if (sc->ok) {
            char held[64];
            snprintf(held, sizeof held, "scale: RTT p50, %d idle held", sc->opened);
            out("%-38s %-9s %11s %11s %8s   (%d of %d opened in %.1f s; raw zmq: %d)\n",
                "scale: RSS per idle session", "KiB", num(a, sizeof a, sc->mdg_kib),
                num(b, sizeof b, sc->zmq_kib), ratio(c, sizeof c, sc->mdg_kib, sc->zmq_kib),
                sc->opened, sc->sessions, sc->connect_secs, sc->zmq_opened);
            out("%-38s %-9s %11s %11s %8s   (%.2fx the RTT with none held)\n", held, "us",
                num(a, sizeof a, sc->rttn_p50), "-", "-",
                sc->rtt0_p50 > 0 ? sc->rttn_p50 / sc->rtt0_p50 : 0);
            snprintf(held, sizeof held, "scale: RTT p99, %d idle held", sc->opened);
            out("%-38s %-9s %11s\n", held, "us", num(a, sizeof a, sc->rttn_p99));
            out("%-38s %-9s %11s\n", "scale: RTT p50, none held", "us", num(a, sizeof a, sc->rtt0_p50));
            out("%-38s %-9s %11s\n", "scale: RTT p99, none held", "us", num(a, sizeof a, sc->rtt0_p99));
        } else {
            out("%-38s n/a (%s)\n", "scale", sc->why);
        }
    }
    if (selected("fairness"))
        print_fairness();
    out("\ntargets\n");
    for (int i = 0; i < ntargets; i++)
        out("  %-52s %-30s %s\n", targets[i].text, targets[i].value, targets[i].result);
    if (nnotes) {
        out("\nnotes\n");
        for (int i = 0; i < nnotes; i++)
            out("  %s\n", notes[i]);
    }
}

/* ------------------------------------------------------------- JSON */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v)
{
    if (isnan(v) || isinf(v))
        fputs("null", f);
    else
        fprintf(f, "%.6g", v);
}

static void write_json(const char *path, const machine *m, const scale_res *sc, bool scale_ran)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        return;
    }
    fprintf(f, "{\n  \"date\": ");
    json_str(f, m->date);
    fprintf(f, ",\n  \"machine\": {\"cpu\": ");
    json_str(f, m->cpu);
    fprintf(f, ", \"cores\": %ld, \"kernel\": ", m->cores);
    json_str(f, m->kernel);
    fprintf(f, "},\n  \"runs\": %d,\n  \"seconds_per_run\": %.2f,\n  \"figures\": [\n", cfg.runs, cfg.secs);
    for (int i = 0; i < nlines; i++) {
        const line *l = &lines[i];
        fprintf(f, "    {\"id\": ");
        json_str(f, l->id);
        fprintf(f, ", \"label\": ");
        json_str(f, l->label);
        fprintf(f, ", \"unit\": ");
        json_str(f, l->unit);
        fprintf(f, ", \"better\": \"%s\"", l->better == HIGHER ? "higher" : "lower");
        for (int v = 0; v < NV; v++) {
            fprintf(f, ", \"%s\": ", vkey[v]);
            json_num(f, l->v[v]);
        }
        fprintf(f, ", \"mdg_over_zmq\": ");
        json_num(f, l->v[V_MDG] / l->v[V_ZMQ]);
        fprintf(f, ", \"mdg_over_nats_tls\": ");
        json_num(f, l->v[V_MDG] / l->v[V_TLS]);
        fprintf(f, "}%s\n", i + 1 < nlines ? "," : "");
    }
    fprintf(f, "  ],\n  \"scale\": ");
    if (!scale_ran) {
        fprintf(f, "null");
    } else if (!sc->ok) {
        fprintf(f, "{\"error\": ");
        json_str(f, sc->why);
        fprintf(f, "}");
    } else {
        fprintf(f, "{\"sessions\": %d, \"opened\": %d, \"open_seconds\": %.2f, "
                   "\"rss_kib_per_session\": %.3f, \"zmq_opened\": %d, "
                   "\"zmq_rss_kib_per_connection\": %.3f, \"rtt_p50_us_idle_held\": %.1f, "
                   "\"rtt_p99_us_idle_held\": %.1f, \"rtt_p50_us_no_idle\": %.1f, "
                   "\"rtt_p99_us_no_idle\": %.1f}",
                sc->sessions, sc->opened, sc->connect_secs, sc->mdg_kib, sc->zmq_opened, sc->zmq_kib,
                sc->rttn_p50, sc->rttn_p99, sc->rtt0_p50, sc->rtt0_p99);
    }
    fprintf(f, ",\n  \"fairness\": ");
    if (!selected("fairness")) {
        fprintf(f, "null");
    } else {
        static const char *const keys[] = {"alone", "flooder", "stalled_reader"};
        const bres *alone = med_of("fair_alone", V_MDG);
        fprintf(f, "{\"timeout_ms\": %d, \"flood_calls\": %d", FAIR_TIMEOUT_MS, FLOOD_CALLS);
        for (int i = 0; i < 3; i++) {
            const bres *m = med_of(fair_ids[i], V_MDG);
            fprintf(f, ",\n    \"%s\": ", keys[i]);
            if (!m->ok) {
                fprintf(f, "{\"error\": ");
                json_str(f, m->why);
                fprintf(f, "}");
                continue;
            }
            fprintf(f, "{\"p50_us\": ");
            json_num(f, m->p50);
            fprintf(f, ", \"p99_us\": ");
            json_num(f, m->p99);
            fprintf(f, ", \"calls\": %ld, \"failed\": %ld", m->calls, m->failed);
            if (i) {
                fprintf(f, ", \"p99_over_alone\": ");
                json_num(f, alone->ok ? m->p99 / alone->p99 : NAN);
            }
            if (i == 1)
                fprintf(f, ", \"flood_sent\": %ld, \"flood_send_seconds\": %.3f", m->other_sent, m->flood_secs);
            if (i == 2)
                fprintf(f, ", \"stream_replies\": %ld, \"reply_more_max_block_ms\": %.1f", m->other_sent,
                        m->block_ms);
            fprintf(f, "}");
        }
        fprintf(f, "}");
    }
    fprintf(f, ",\n  \"targets\": [\n");
    for (int i = 0; i < ntargets; i++) {
        fprintf(f, "    {\"target\": ");
        json_str(f, targets[i].text);
        fprintf(f, ", \"value\": ");
        json_str(f, targets[i].value);
        fprintf(f, ", \"result\": \"%s\"}%s\n", targets[i].result, i + 1 < ntargets ? "," : "");
    }
    fprintf(f, "  ],\n  \"notes\": [");
    for (int i = 0; i < nnotes; i++) {
        fprintf(f, "%s\n    ", i ? "," : "");
        json_str(f, notes[i]);
    }
    fprintf(f, "%s]\n}\n", nnotes ? "\n  " : "");
    fclose(f);
}

/* ------------------------------------------------------------- main */

static int usage(void)
{
    fprintf(stderr, "usage: mdg_bench [--runs N] [--secs S] [--sessions N] [--only LIST] [--impl LIST]\n"
                    "                 [--nats URL] [--nats-tls URL --nats-ca CERT]\n"
                    "                 [--json FILE] [--table FILE]\n"
                    "  --only: comma-separated of rtt,tput,node,fleet,bulk,connect,scale,fairness\n"
                    "  --impl: comma-separated of mdg,zmq,nats,tls\n");
    return 2;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strncmp(argv[1], "serve-", 6) == 0 || strncmp(argv[1], "idle-", 5) == 0))
        return serve_child(argc - 1, argv + 1);
    for (int i = 1; i < argc; i += 2) { /* options all take a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v)
            return usage();
        if (strcmp(a, "--runs") == 0)
            cfg.runs = atoi(v);
        else if (strcmp(a, "--secs") == 0)
            cfg.secs = atof(v);
        else if (strcmp(a, "--sessions") == 0)
            cfg.sessions = atoi(v);
        else if (strcmp(a, "--only") == 0)
            cfg.only = v;
        else if (strcmp(a, "--impl") == 0)
            impl = v;
        else if (strcmp(a, "--nats") == 0)
            cfg.nats_url = *v ? v : NULL;
        else if (strcmp(a, "--nats-tls") == 0)
            cfg.nats_tls_url = *v ? v : NULL;
        else if (strcmp(a, "--nats-ca") == 0)
            cfg.nats_ca = v;
        else if (strcmp(a, "--json") == 0)
            cfg.json = v;
        else if (strcmp(a, "--table") == 0)
            cfg.table = v;
        else
            return usage();
    }
    if (cfg.runs < 1 || cfg.runs > MAX_RUNS || cfg.secs <= 0 || cfg.sessions < 1)
        return usage();
    if (cfg.nats_tls_url && !cfg.nats_ca) {
        fprintf(stderr, "--nats-tls needs --nats-ca\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    for (int i = 0; i < PARAMS_BYTES; i++)
        payload[i] = (uint8_t)(i * 13 + 1);
    bulk_data();

    /* Round after round, every variant of every group in turn, so that the
     * machine's load drifts over all of them alike. A variant that is not
     * available in the first round is not tried again. */
    bool tty = isatty(2);
    for (int r = 0; r < cfg.runs; r++) {
        for (int i = 0; i < NGROUPS; i++) {
            group *g = &groups[i];
            measured *M = &meas[i];
            if (!group_selected(g))
                continue;
            for (int v = 0; v < NV; v++) {
                if (!g->has[v] || !in_list(impl, vshort[v]) ||
                    (r > 0 && M->nrun[v] && !M->run[v][0].ok))
                    continue;
                fprintf(stderr, "%s[run %d/%d] %-30s %-12s%s", tty ? "\r" : "", r + 1, cfg.runs,
                        g->title, vname[v], tty ? "" : "\n");
                bres res = call_variant(g, v);
                M->run[v][M->nrun[v]++] = res;
                if (!res.ok)
                    fprintf(stderr, "%s  n/a: %s\n", tty ? "\n" : "", res.why);
            }
        }
    }
    scale_res sc = {0};
    bool scale_ran = selected("scale");
    if (scale_ran) {
        fprintf(stderr, "%s[scale] %d idle sessions%30s%s", tty ? "\r" : "", cfg.sessions, "",
                tty ? "" : "\n");
        char self[4096];
        ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
        if (n > 0)
            self[n] = '\0';
        else
            snprintf(self, sizeof self, "%s", argv[0]);
        sc = scale_run(self);
    }
    if (tty)
        fprintf(stderr, "\r%70s\r", "");
    nats_shutdown();
    bulk_free();

    for (int i = 0; i < NGROUPS; i++)
        take_medians(i);
    build_lines();
    build_targets(&sc, scale_ran);
    machine m;
    machine_info(&m);
    if (cfg.table && !(table_file = fopen(cfg.table, "w")))
        perror(cfg.table);
    print_table(&m, &sc, scale_ran);
    if (table_file)
        fclose(table_file);
    if (cfg.json)
        write_json(cfg.json, &m, &sc, scale_ran);
    return 0;
}
