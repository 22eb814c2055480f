/*
 * vfio-hold: hold a PCI function through VFIO like a running QEMU does, for the
 * pt-hook test bed (tests/vm). Built by run.sh with `gcc -static -O2`.
 *
 *   vfio-hold BDF [--group-only] [--until FILE]
 *
 * Opens /dev/vfio/vfio (the container), the function's group /dev/vfio/N (N from
 * /sys/bus/pci/devices/BDF/iommu_group), attaches the group to the container,
 * sets a type1 IOMMU and (unless --group-only) takes the device fd with
 * VFIO_GROUP_GET_DEVICE_FD. Then prints one line
 *
 *   HOLDING pid=<pid> group=<N> container_fd=<fd> group_fd=<fd> device_fd=<fd|-1>
 *
 * and waits (nanosleep polls, no busy loop) until SIGTERM/SIGINT or until FILE
 * exists, closes everything and exits 0. Any failure: a message with errno on
 * stderr, exit 1. The device must already be bound to vfio-pci.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/vfio.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;

static void on_signal(int sig) { (void)sig; stop = 1; }

static void die(const char *what, const char *arg) {
    int e = errno;
    fprintf(stderr, "vfio-hold: %s%s%s: %s (errno %d)\n", what, arg ? " " : "", arg ? arg : "",
            strerror(e), e);
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: vfio-hold BDF [--group-only] [--until FILE]\n");
    exit(1);
}

int main(int argc, char **argv) {
    const char *bdf = NULL, *until = NULL;
    int group_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--group-only")) {
            group_only = 1;
        } else if (!strcmp(argv[i], "--until")) {
            if (++i >= argc) usage();
            until = argv[i];
        } else if (argv[i][0] == '-' || bdf) {
            usage();
        } else {
            bdf = argv[i];
        }
    }
    if (!bdf || strchr(bdf, '/')) usage();

    char path[PATH_MAX], link[PATH_MAX];
    snprintf(path, sizeof path, "/sys/bus/pci/devices/%s/iommu_group", bdf);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) die("readlink", path);
    link[n] = 0;
    const char *group = basename(link);

    int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (container < 0) die("open", "/dev/vfio/vfio");
    int api = ioctl(container, VFIO_GET_API_VERSION);
    if (api != VFIO_API_VERSION) {
        fprintf(stderr, "vfio-hold: VFIO_GET_API_VERSION = %d, want %d\n", api, VFIO_API_VERSION);
        return 1;
    }

    char gpath[64];
    snprintf(gpath, sizeof gpath, "/dev/vfio/%s", group);
    int gfd = open(gpath, O_RDWR | O_CLOEXEC);
    if (gfd < 0) die("open", gpath);
    struct vfio_group_status st = {.argsz = sizeof st};
    if (ioctl(gfd, VFIO_GROUP_GET_STATUS, &st) < 0) die("VFIO_GROUP_GET_STATUS", gpath);
    if (!(st.flags & VFIO_GROUP_FLAGS_VIABLE)) {
        fprintf(stderr, "vfio-hold: group %s is not viable (every device in it must be on "
                        "vfio-pci or unbound)\n", group);
        return 1;
    }
    if (ioctl(gfd, VFIO_GROUP_SET_CONTAINER, &container) < 0) die("VFIO_GROUP_SET_CONTAINER", gpath);
    int type = 0;
    if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) > 0)
        type = VFIO_TYPE1v2_IOMMU;
    else if (ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1_IOMMU) > 0)
        type = VFIO_TYPE1_IOMMU;
    else {
        fprintf(stderr, "vfio-hold: the container supports neither VFIO_TYPE1v2_IOMMU nor "
                        "VFIO_TYPE1_IOMMU (is vfio_iommu_type1 loaded?)\n");
        return 1;
    }
    if (ioctl(container, VFIO_SET_IOMMU, type) < 0) die("VFIO_SET_IOMMU", NULL);

    int dfd = -1;
    if (!group_only) {
        dfd = ioctl(gfd, VFIO_GROUP_GET_DEVICE_FD, bdf);
        if (dfd < 0) die("VFIO_GROUP_GET_DEVICE_FD", bdf);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: nanosleep returns EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    printf("HOLDING pid=%d group=%s container_fd=%d group_fd=%d device_fd=%d\n", (int)getpid(),
           group, container, gfd, dfd);
    fflush(stdout);

    struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
    while (!stop) {
        if (until && access(until, F_OK) == 0) break;
        nanosleep(&ts, NULL);
    }

    if (dfd >= 0) close(dfd);
    close(gfd);
    close(container);
    return 0;
}
