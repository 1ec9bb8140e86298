/* pgserver.c - see pgserver.h. */
#include "pgserver.h"
#include "testsys.h"

#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#define READY_DEADLINE_MS 60000
#define STOP_DEADLINE_MS 20000

static t_pg *running[4]; /* for the atexit handler */

/* The newest installed server's bin directory. */
static int find_bindir(char *out, size_t len)
{
    const char *env = getenv("MDG_PG_BINDIR");
    glob_t g;
    double best = -1;
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return 0;
    }
    if (glob("/usr/lib/postgresql/*/bin/postgres", 0, NULL, &g) != 0) {
        fprintf(stderr, "pgserver: no /usr/lib/postgresql/*/bin/postgres (install Debian's "
                        "postgresql, or set MDG_PG_BINDIR)\n");
        return -1;
    }
    for (size_t i = 0; i < g.gl_pathc; i++) {
        double v = atof(g.gl_pathv[i] + strlen("/usr/lib/postgresql/"));
        if (v > best) {
            best = v;
            snprintf(out, len, "%.*s", (int)(strlen(g.gl_pathv[i]) - strlen("/postgres")),
                     g.gl_pathv[i]);
        }
    }
    globfree(&g);
    return 0;
}

/* Fork a child that becomes "nobody" when we are root, sends its output
 * to log, and runs argv. With die_with_us, the kernel sends it SIGQUIT
 * (PostgreSQL's immediate shutdown) when this process ends. */
static pid_t spawn(char *const argv[], const char *log, bool die_with_us)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 || setuid(pw->pw_uid) != 0) {
            perror("pgserver: cannot become nobody");
            _exit(127);
        }
    }
    /* After the change of user, which would clear it. */
    if (die_with_us && (prctl(PR_SET_PDEATHSIG, SIGQUIT) != 0 || getppid() != parent))
        _exit(127);
    execv(argv[0], argv);
    perror("pgserver: exec");
    _exit(127);
}

static void print_file(const char *path)
{
    char buf[4096];
    size_t n;
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    fprintf(stderr, "---- %s\n", path);
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        fwrite(buf, 1, n, stderr);
    fprintf(stderr, "----\n");
    fclose(f);
}

static void stop_all(void)
{
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i])
            t_pg_stop(running[i]);
}

/* Start the postmaster on a new free port and wait until it is ready:
 * 0, 1 when it exited (the port may have been taken meanwhile: try
 * another), -1 on other failures. */
static int start_server(t_pg *pg, const char *bindir)
{
    char postgres[300], data[200], log[200], port[16], sockdir[160];
    snprintf(postgres, sizeof postgres, "%s/postgres", bindir);
    snprintf(data, sizeof data, "%s/data", pg->dir);
    snprintf(log, sizeof log, "%s/server.log", pg->dir);
    snprintf(sockdir, sizeof sockdir, "unix_socket_directories=%s", pg->dir);
    pg->port = t_free_port();
    snprintf(port, sizeof port, "%d", pg->port);
    char *const argv[] = {postgres, "-D", data, "-p", port, "-c", "listen_addresses=127.0.0.1",
                          "-c", sockdir, "-c", "fsync=off", "-c", "synchronous_commit=off",
                          "-c", "full_page_writes=off", NULL};
    pg->pid = spawn(argv, log, true);
    if (pg->pid < 0) {
        perror("pgserver: fork");
        pg->pid = 0;
        return -1;
    }
    snprintf(pg->base, sizeof pg->base, "postgresql://messidge@127.0.0.1:%d", pg->port);
    char uri[200];
    snprintf(uri, sizeof uri, "%s/postgres?connect_timeout=2", pg->base);
    for (int64_t deadline = now_ms() + READY_DEADLINE_MS; now_ms() < deadline;) {
        int status;
        if (waitpid(pg->pid, &status, WNOHANG) == pg->pid) {
            pg->pid = 0;
            return 1;
        }
        if (PQping(uri) == PQPING_OK)
            return 0;
        usleep(50 * 1000); /* polling for readiness, with the deadline above */
    }
    fprintf(stderr, "pgserver: the server on port %d was not ready within %d s\n", pg->port,
            READY_DEADLINE_MS / 1000);
    return -1;
}

int t_pg_start(t_pg *pg)
{
    char bindir[256], initdb[300], data[200], log[200];
    int status, rc = -1;

    memset(pg, 0, sizeof *pg);
    if (find_bindir(bindir, sizeof bindir) != 0)
        return -1;
    snprintf(pg->dir, sizeof pg->dir, "/tmp/mdg-pg-XXXXXX");
    if (!mkdtemp(pg->dir)) {
        perror("pgserver: mkdtemp");
        return -1;
    }
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("nobody");
        if (!pw || chown(pg->dir, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "pgserver: cannot give %s to nobody\n", pg->dir);
            goto out;
        }
    }
    snprintf(initdb, sizeof initdb, "%s/initdb", bindir);
    snprintf(data, sizeof data, "%s/data", pg->dir);
    snprintf(log, sizeof log, "%s/initdb.log", pg->dir);
    char *const argv[] = {initdb, "-D", data, "-U", "messidge", "--auth=trust", "-E", "UTF8",
                          "--no-sync", "--no-instructions", NULL};
    pid_t pid = spawn(argv, log, false);
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        fprintf(stderr, "pgserver: initdb failed\n");
        print_file(log);
        goto out;
    }
    for (int attempt = 0; attempt < 3 && rc != 0; attempt++) {
        rc = start_server(pg, bindir);
        if (rc < 0)
            break;
    }
    if (rc != 0) {
        fprintf(stderr, "pgserver: the server did not start\n");
        snprintf(log, sizeof log, "%s/server.log", pg->dir);
        print_file(log);
    }
out:
    for (size_t i = 0; rc == 0 && i < sizeof running / sizeof running[0]; i++)
        if (!running[i]) {
            if (i == 0)
                atexit(stop_all);
            running[i] = pg;
            break;
        }
    if (rc != 0)
        t_pg_stop(pg);
    return rc ? -1 : 0;
}

void t_pg_stop(t_pg *pg)
{
    int status;
    if (pg->pid > 0) {
        kill(pg->pid, SIGINT); /* fast shutdown: sessions are ended */
        int64_t deadline = now_ms() + STOP_DEADLINE_MS;
        while (waitpid(pg->pid, &status, WNOHANG) == 0) {
            if (now_ms() > deadline) {
                fprintf(stderr, "pgserver: %d did not stop: killed\n", (int)pg->pid);
                kill(pg->pid, SIGKILL);
                waitpid(pg->pid, &status, 0);
                break;
            }
            usleep(20 * 1000);
        }
        pg->pid = 0;
    }
    if (pg->dir[0]) {
        t_rm_tree(pg->dir);
        pg->dir[0] = '\0';
    }
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (running[i] == pg)
            running[i] = NULL;
}

int t_pg_exec(const char *uri, const char *sql, char *out, size_t len)
{
    PGconn *c = PQconnectdb(uri);
    PGresult *r = NULL;
    int rc = -1;
    if (PQstatus(c) != CONNECTION_OK) {
        fprintf(stderr, "pgserver: cannot connect to %s: %s", uri, PQerrorMessage(c));
    } else {
        r = PQexec(c, sql);
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
            rc = 0;
            if (out && len)
                snprintf(out, len, "%s",
                         PQntuples(r) > 0 && PQnfields(r) > 0 ? PQgetvalue(r, 0, 0) : "");
        } else {
            fprintf(stderr, "pgserver: %s: %s", sql, PQresultErrorMessage(r));
        }
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

int t_pg_new_db(const t_pg *pg, const char *name, char *uri, size_t len)
{
    char admin[200], sql[200];
    snprintf(admin, sizeof admin, "%s/postgres", pg->base);
    /* name is the test's own constant: an identifier cannot be a parameter */
    snprintf(sql, sizeof sql, "CREATE DATABASE \"%s\"", name);
    if (t_pg_exec(admin, sql, NULL, 0) != 0)
        return -1;
    snprintf(uri, len, "%s/%s", pg->base, name);
    return 0;
}
