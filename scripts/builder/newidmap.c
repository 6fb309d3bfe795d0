/*
 * newuidmap / newgidmap for the local cluster's builder image (scripts/local-images.sh):
 * one setuid-root program, acting by the name it is called as.
 *
 *   newuidmap PID INSIDE OUTSIDE COUNT [INSIDE OUTSIDE COUNT]...
 *
 * Why not Debian's uidmap package: its helpers keep euid 0 and rely on CAP_DAC_OVERRIDE
 * to open /proc/PID/uid_map, and a Kiln build pod drops every capability but SETUID and
 * SETGID. Like shadow's helpers built with libcap (moby/buildkit's images), this one
 * becomes the calling user again, keeping only the one capability the kernel checks when
 * the map is written (CAP_SETUID for uid_map, CAP_SETGID for gid_map), and then opens
 * the file as that user, who owns it.
 *
 * A mapping is allowed when it maps the caller's own ID (count 1) or lies inside one of
 * the caller's ranges in /etc/subuid (/etc/subgid), named by user name or numeric ID;
 * the target process must belong to the caller.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *prog;

static void die(const char *what) {
    fprintf(stderr, "%s: %s%s%s\n", prog, what, errno ? ": " : "", errno ? strerror(errno) : "");
    exit(1);
}

static unsigned long number(const char *s) {
    char *end;
    errno = 0;
    unsigned long n = strtoul(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') {
        errno = 0;
        die("not a number in the arguments");
    }
    return n;
}

/* The name of user `uid` in /etc/passwd, or NULL. (No NSS: the program is static.) */
static char *user_name(unsigned long uid) {
    FILE *f = fopen("/etc/passwd", "r");
    char line[1024];
    if (!f) return NULL;
    while (fgets(line, sizeof line, f)) {
        char *name = strtok(line, ":"), *pw = strtok(NULL, ":"), *id = strtok(NULL, ":");
        (void)pw;
        if (name && id && strtoul(id, NULL, 10) == uid) {
            fclose(f);
            return strdup(name);
        }
    }
    fclose(f);
    return NULL;
}

/* Whether [outside, outside+count) lies in a range of the caller in `file`. */
static int allowed(const char *file, const char *name, unsigned long id, unsigned long outside,
                   unsigned long count) {
    FILE *f = fopen(file, "r");
    char line[1024], idstr[32];
    int ok = 0;
    if (!f) return 0;
    snprintf(idstr, sizeof idstr, "%lu", id);
    while (!ok && fgets(line, sizeof line, f)) {
        char *owner = strtok(line, ":"), *start = strtok(NULL, ":"), *len = strtok(NULL, ":\n");
        if (!owner || !start || !len) continue;
        if (strcmp(owner, idstr) != 0 && !(name && strcmp(owner, name) == 0)) continue;
        unsigned long s = strtoul(start, NULL, 10), l = strtoul(len, NULL, 10);
        ok = outside >= s && count <= l && outside - s <= l - count;
    }
    fclose(f);
    return ok;
}

int main(int argc, char **argv) {
    prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
    int gid = strstr(prog, "gid") != NULL;
    if (argc < 5 || (argc - 2) % 3 != 0) {
        fprintf(stderr, "usage: %s PID INSIDE OUTSIDE COUNT [INSIDE OUTSIDE COUNT]...\n", prog);
        return 1;
    }
    uid_t ruid = getuid();
    gid_t rgid = getgid();
    unsigned long pid = number(argv[1]);
    unsigned long own = gid ? rgid : ruid;
    char *name = user_name(ruid);

    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%lu", pid);
    if (stat(path, &st) < 0) die("no such process");
    if (st.st_uid != ruid || st.st_gid != rgid) {
        errno = 0;
        die("the target process is not the caller's");
    }

    char map[4096] = "";
    size_t used = 0;
    for (int i = 2; i + 2 < argc; i += 3) {
        unsigned long inside = number(argv[i]), outside = number(argv[i + 1]),
                      count = number(argv[i + 2]);
        if (count == 0 || !((outside == own && count == 1) ||
                            allowed(gid ? "/etc/subgid" : "/etc/subuid", name, ruid, outside, count))) {
            errno = 0;
            die("a mapping is outside the caller's subordinate IDs");
        }
        int n = snprintf(map + used, sizeof map - used, "%lu %lu %lu\n", inside, outside, count);
        if (n < 0 || (size_t)n >= sizeof map - used) {
            errno = 0;
            die("too many mappings");
        }
        used += (size_t)n;
    }

    /* Become the caller again, keeping the one capability the kernel checks. */
    int cap = gid ? CAP_SETGID : CAP_SETUID;
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) die("prctl");
    if (setresgid(rgid, rgid, rgid) < 0) die("setresgid");
    if (setresuid(ruid, ruid, ruid) < 0) die("setresuid");
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    data[0].effective = data[0].permitted = 1u << cap;
    if (syscall(SYS_capset, &header, data) < 0) die("capset");

    snprintf(path, sizeof path, "/proc/%lu/%s", pid, gid ? "gid_map" : "uid_map");
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open of the map");
    if (write(fd, map, used) != (ssize_t)used) die("write of the map");
    close(fd);
    return 0;
}
