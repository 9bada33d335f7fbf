#!/usr/bin/env bash
# The floor under a no-change backup of many owners (BENCHMARKS.md, "After the group commit"):
# how long `lstat` alone of every path mailpack's first pass checks takes, on 2 threads, with
# nothing opened, compared or committed. Paths: the three metadata files of every mailbox
# directory of the spool (present or not) and eight per-user file probes per user.
#   usage: bench/stat-floor.sh SPOOL_COPY USERS     (e.g. bench/work/many/s-20000 20000)
set -euo pipefail
s=$1
users=$2
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
find "$s/spool" -type d -name '*' | awk 'length($0) > 40' \
  | sed 's|$|/cyrus.header|;p;s|header$|index|;p;s|index$|annotations|' > "$w/paths"
for ((u = 0; u < users; u++)); do
  printf -v id 'u%05d' "$u"
  for f in seen sub dav; do
    echo "$s/conf/user/u/$id.$f"
    echo "$s/conf/user/uuid/x/y/probe$u/$f.db"
  done
  echo "$s/conf/quota/u/user.$id"
  echo "$s/sieve/uuid/x/y/probe$u"
done >> "$w/paths"
cat > "$w/floor.c" <<'C'
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
static char **paths;
static long n;
static void *half(void *arg) {
  struct stat st;
  for (long i = (long)arg; i < n; i += 2) lstat(paths[i], &st);
  return 0;
}
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "r");
  char line[4096];
  long cap = 1024;
  paths = malloc(cap * sizeof *paths);
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = 0;
    if (n == cap) paths = realloc(paths, (cap *= 2) * sizeof *paths);
    paths[n++] = strdup(line);
  }
  for (int run = 0; run < 3; run++) {
    struct timespec a, b;
    pthread_t t[2];
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long k = 0; k < 2; k++) pthread_create(&t[k], 0, half, (void *)k);
    for (int k = 0; k < 2; k++) pthread_join(t[k], 0);
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld lstat on 2 threads: %.3f s\n", n,
           (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
  }
  return 0;
}
C
cc -O2 -pthread -o "$w/floor" "$w/floor.c"
"$w/floor" "$w/paths"
