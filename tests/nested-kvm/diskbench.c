/* diskbench: 4 KiB block I/O inside a guest, for `hangar bench disk`.
 *
 * Usage: diskbench DEVICE OPS
 * Runs sequential write, sequential read, random write and random read of
 * OPS 4 KiB blocks each with O_DIRECT, one request at a time (queue depth
 * 1, what a VMM's per-request cost shows best), and prints one line per
 * mode: "diskbench MODE ops=N ms=T". Built static by the nested lane
 * (gcc -static) and run inside the L2 guest from a small ext4 disk.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#define BLOCK 4096

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: diskbench DEVICE OPS\n");
        return 2;
    }
    long ops = atol(argv[2]);
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0 || ops <= 0) {
        perror("diskbench: open");
        return 1;
    }
    uint64_t bytes = 0;
    /* A block device has no file size; a regular file (a local try) has. */
    if (ioctl(fd, BLKGETSIZE64, &bytes) != 0)
        bytes = (uint64_t)lseek(fd, 0, SEEK_END);
    if (bytes < (uint64_t)BLOCK * 2) {
        perror("diskbench: size");
        return 1;
    }
    uint64_t blocks = bytes / BLOCK;
    void *buf;
    if (posix_memalign(&buf, BLOCK, BLOCK) != 0)
        return 1;
    memset(buf, 0x5a, BLOCK);
    const char *modes[] = {"seq-write", "seq-read", "rand-write", "rand-read"};
    for (int m = 0; m < 4; m++) {
        int write = (m % 2) == 0;
        int random = m >= 2;
        uint64_t x = 88172645463325252ULL;
        double t0 = now_ms();
        for (long i = 0; i < ops; i++) {
            uint64_t b;
            if (random) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b = x % blocks;
            } else {
                b = (uint64_t)i % blocks;
            }
            ssize_t n = write ? pwrite(fd, buf, BLOCK, (off_t)(b * BLOCK))
                              : pread(fd, buf, BLOCK, (off_t)(b * BLOCK));
            if (n != BLOCK) {
                fprintf(stderr, "diskbench: %s failed at block %llu\n", modes[m],
                        (unsigned long long)b);
                return 1;
            }
        }
        if (write && fdatasync(fd) != 0) {
            perror("diskbench: fdatasync");
            return 1;
        }
        printf("diskbench %s ops=%ld ms=%.1f\n", modes[m], ops, now_ms() - t0);
        fflush(stdout);
    }
    return 0;
}
