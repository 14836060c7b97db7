/*
 * Native scenarios for memuse: `scenarios NAME [ARGS]` sets some memory up, writes one line
 * "memuse-scenario NAME key=value ..." on stdout, stops itself with SIGSTOP to be measured
 * and exits 0 once continued. `scenarios --list` prints the names.
 *
 * Exit status 77: this machine cannot run the scenario (no hugetlb pages, no address space,
 * not root for hwpoison or devmem-private).
 * Exit status 2: bad usage. Any other failure: status 1 and a message on stderr.
 *
 * Nothing here calls malloc except heap-active, heap-passive and threads, so the heap of
 * the other scenarios holds only what they put there. Built with -O0 so the recursion of
 * `stack` keeps one real frame per call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
#endif

#define UNAVAILABLE 77
#define MIB (1024L * 1024L)
#define HUGE_2M (2 * MIB)
#define MAX_THREADS 256

static const char *scenario;
static char info[4096];
static size_t info_len;
static long page;
static volatile char *keep; /* what a scenario set up stays reachable */

static void say(int fd, const char *fmt, va_list ap)
{
	char line[1024];
	int n = vsnprintf(line, sizeof(line), fmt, ap);

	if (n > (int)sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (n > 0 && write(fd, line, n) < 0)
		_exit(1);
}

static void __attribute__((noreturn, format(printf, 2, 3))) die(int status, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	say(2, fmt, ap);
	va_end(ap);
	_exit(status);
}

static void __attribute__((format(printf, 1, 2))) add(const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(info + info_len, sizeof(info) - info_len, fmt, ap);
	va_end(ap);
	if (n > 0 && info_len + n < sizeof(info))
		info_len += n;
}

static void stop_then_exit(void)
{
	char line[sizeof(info) + 128];
	int n = snprintf(line, sizeof(line), "memuse-scenario %s%s\n", scenario, info);

	if (n > 0 && write(1, line, n) < 0)
		_exit(1);
	raise(SIGSTOP);
	_exit(0);
}

static long number(int argc, char **argv, int index, long fallback)
{
	char *end;
	long value;

	if (index >= argc)
		return fallback;
	errno = 0;
	value = strtol(argv[index], &end, 0);
	if (errno || *end || end == argv[index] || value < 0)
		die(2, "scenarios %s: not a number: %s\n", scenario, argv[index]);
	return value;
}

static void touch(volatile char *start, long bytes)
{
	for (long i = 0; i < bytes; i += page)
		start[i] = 1;
}

/* A page-aligned region at the top of the heap, grown with sbrk (brk). */
static char *heap_region(long bytes)
{
	char *current = sbrk(0);
	long pad = (long)(-(uintptr_t)current & (uintptr_t)(page - 1));
	char *start;

	if (pad && sbrk(pad) == (void *)-1)
		die(UNAVAILABLE, "scenarios %s: sbrk: %s\n", scenario, strerror(errno));
	start = sbrk(bytes);
	if (start == (void *)-1)
		die(UNAVAILABLE, "scenarios %s: sbrk(%ld): %s\n", scenario, bytes, strerror(errno));
	return start;
}

static char *anonymous(long bytes, int extra_flags)
{
	char *start = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS | extra_flags, -1, 0);

	if (start == MAP_FAILED)
		die(UNAVAILABLE, "scenarios %s: mmap(%ld bytes): %s\n", scenario, bytes,
		    strerror(errno));
	return start;
}

/* Small regions stay in base pages whatever the THP setting, so counts are exact. */
static void no_thp(char *start, long bytes)
{
	madvise(start, bytes, MADV_NOHUGEPAGE); /* EINVAL without THP: nothing to avoid */
}

static void do_nothing(int argc, char **argv)
{
	(void)argc;
	(void)argv;
}

static void heap_active(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 20000);
	char *p = malloc(bytes);

	if (!p)
		die(1, "scenarios %s: malloc failed\n", scenario);
	for (long i = 0; i < bytes; i++)
		p[i] = 'a';
	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

static void heap_passive(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 20000);
	char *p = malloc(bytes);

	if (!p)
		die(1, "scenarios %s: malloc failed\n", scenario);
	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

static char *stack_top;

static int __attribute__((noinline)) recurse(long calls, long left)
{
	volatile char here = 0;

	if (left == 0) {
		add(" calls=%ld span=%ld", calls, (long)(stack_top - (char *)&here));
		stop_then_exit();
		return 0;
	}
	/* not a tail call: the result is used after the call returns */
	return recurse(calls, left - 1) + here;
}

static void stack(int argc, char **argv)
{
	volatile char anchor = 0;
	long calls = number(argc, argv, 2, 20000);

	stack_top = (char *)&anchor;
	recurse(calls, calls);
}

static void heap_1g(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 1024) * MIB;
	char *p = heap_region(bytes);

	touch(p, bytes);
	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

static void mmap_anon(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 16) * MIB;
	char *p = anonymous(bytes, 0);

	touch(p, bytes);
	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

/* Transparent huge pages: an aligned region of its own, MADV_HUGEPAGE'd and touched. */
static char *thp_region(long bytes)
{
	char *raw = anonymous(bytes + HUGE_2M, 0);
	char *p = (char *)(((uintptr_t)raw + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1));

	/* trim to exactly the aligned region so it is a VMA of its own */
	if (p > raw)
		munmap(raw, p - raw);
	if (raw + bytes + HUGE_2M > p + bytes)
		munmap(p + bytes, raw + bytes + HUGE_2M - (p + bytes));
	if (madvise(p, bytes, MADV_HUGEPAGE))
		die(UNAVAILABLE, "scenarios %s: madvise(MADV_HUGEPAGE): %s\n", scenario,
		    strerror(errno));
	touch(p, bytes);
	return p;
}

static void thp(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 8) * MIB;
	char *p = thp_region(bytes);

	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

/* The same huge pages made PROT_NONE: their pmds stay huge, marked protnone. */
static void thp_protnone(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 8) * MIB;
	char *p = thp_region(bytes);

	if (mprotect(p, bytes, PROT_NONE))
		die(1, "scenarios %s: mprotect(PROT_NONE): %s\n", scenario, strerror(errno));
	keep = p;
	add(" bytes=%ld addr=%p", bytes, (void *)p);
}

static pthread_barrier_t parked;
static pid_t tids[MAX_THREADS];

static void *thread_main(void *arg)
{
	volatile char frame[64 * 1024];

	memset((char *)frame, 1, sizeof(frame));
	tids[(long)arg] = (pid_t)syscall(SYS_gettid);
	pthread_barrier_wait(&parked);
	for (;;)
		pause();
	return NULL;
}

static void threads(int argc, char **argv)
{
	long count = number(argc, argv, 2, 4);
	pthread_t thread;

	if (count < 1 || count > MAX_THREADS)
		die(2, "scenarios %s: 1 to %d threads\n", scenario, MAX_THREADS);
	pthread_barrier_init(&parked, NULL, count + 1);
	for (long i = 0; i < count; i++) {
		int err = pthread_create(&thread, NULL, thread_main, (void *)i);

		if (err)
			die(1, "scenarios %s: pthread_create: %s\n", scenario, strerror(err));
	}
	pthread_barrier_wait(&parked);
	add(" threads=%ld tids=", count);
	for (long i = 0; i < count; i++)
		add(i ? ",%d" : "%d", tids[i]);
}

static void heap_dontneed(int argc, char **argv)
{
	long pages = number(argc, argv, 2, 64);
	long dropped = number(argc, argv, 3, pages / 2);
	char *p;

	if (dropped > pages)
		die(2, "scenarios %s: cannot drop more pages than there are\n", scenario);
	p = heap_region(pages * page);
	no_thp(p, pages * page);
	touch(p, pages * page);
	if (dropped && madvise(p + (pages - dropped) * page, dropped * page, MADV_DONTNEED))
		die(1, "scenarios %s: madvise(MADV_DONTNEED): %s\n", scenario, strerror(errno));
	keep = p;
	add(" pages=%ld dropped=%ld addr=%p", pages, dropped, (void *)p);
}

static void heap_read_only(int argc, char **argv)
{
	long pages = number(argc, argv, 2, 64);
	volatile char *p = heap_region(pages * page);
	long sum = 0;

	no_thp((char *)p, pages * page);
	for (long i = 0; i < pages * page; i += page)
		sum += p[i];
	keep = p;
	add(" pages=%ld sum=%ld addr=%p", pages, sum, (void *)p);
}

static void sparse_64g(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 64) * 1024 * MIB;
	char *p = anonymous(bytes, MAP_NORESERVE);
	char *touched = p + bytes / 2;

	no_thp(p, bytes);
	*touched = 1;
	keep = p;
	add(" bytes=%ld addr=%p touched=%p", bytes, (void *)p, (void *)touched);
}

static void hugetlb(int argc, char **argv)
{
	long pages = number(argc, argv, 2, 2);
	long bytes = pages * HUGE_2M;
	char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_HUGE_2MB, -1, 0);

	if (p == MAP_FAILED)
		die(UNAVAILABLE, "scenarios %s: no %ld hugetlb pages of 2 MiB (%s): "
		    "see /proc/sys/vm/nr_hugepages\n", scenario, pages, strerror(errno));
	for (long i = 0; i < bytes; i += HUGE_2M)
		p[i] = 1;
	keep = p;
	add(" pages=%ld bytes=%ld addr=%p", pages, bytes, (void *)p);
}

static volatile sig_atomic_t sigbus_count;

static void on_sigbus(int sig)
{
	(void)sig;
	sigbus_count++;
}

/*
 * Touched anonymous pages, one of them poisoned with MADV_HWPOISON (root only): the
 * kernel unmaps it and leaves a hwpoison entry in its pte.  Where the kernel sends the
 * caller SIGBUS for it (MF_ACTION_REQUIRED), the handler counts it and carries on.
 * The page frame stays retired until the next boot: meant for a test VM.
 */
static void hwpoison(int argc, char **argv)
{
	long pages = number(argc, argv, 2, 4);
	long poisoned = number(argc, argv, 3, 1);
	struct sigaction action;
	char *p, *victim;

	if (poisoned >= pages)
		die(2, "scenarios %s: the poisoned page must be one of the pages\n", scenario);
	memset(&action, 0, sizeof(action));
	action.sa_handler = on_sigbus;
	sigaction(SIGBUS, &action, NULL);
	p = anonymous(pages * page, 0);
	no_thp(p, pages * page);
	touch(p, pages * page);
	victim = p + poisoned * page;
	if (madvise(victim, page, MADV_HWPOISON))
		die(UNAVAILABLE, "scenarios %s: madvise(MADV_HWPOISON): %s (needs root and "
		    "CONFIG_MEMORY_FAILURE)\n", scenario, strerror(errno));
	keep = p;
	add(" pages=%ld addr=%p poisoned=%p sigbus=%d", pages, (void *)p, (void *)victim,
	    (int)sigbus_count);
}

/* Field 47 of /proc/self/stat: the heap's start (start_brk); 0 when unreadable. */
static uintptr_t start_brk_of_self(void)
{
	char stat[4096], *field;
	ssize_t n;
	int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	n = read(fd, stat, sizeof(stat) - 1);
	close(fd);
	if (n <= 0)
		return 0;
	stat[n] = '\0';
	field = strrchr(stat, ')');	/* the command name may hold spaces and parentheses */
	if (!field)
		return 0;
	field += 2;			/* field 3, the state */
	for (int index = 3; field && index < 47; index++) {
		field = strchr(field, ' ');
		if (field)
			field++;
	}
	return field ? (uintptr_t)strtoull(field, NULL, 10) : 0;
}

/*
 * One anonymous page mapped exactly at start_brk by a process that never moved brk: its
 * VMA begins where the heap would.  smaps calls it [heap] where its rule is <=/>= (up to
 * 6.6.y), and not where the rule is strict (6.7 on).
 */
static void brk_page(int argc, char **argv)
{
	char *brk_now = sbrk(0);
	char *start_brk = (char *)start_brk_of_self();
	char *p;

	(void)argc;
	(void)argv;
	if (!start_brk || brk_now != start_brk)
		die(1, "scenarios %s: brk %p is not start_brk %p\n", scenario, (void *)brk_now,
		    (void *)start_brk);
	/* a mapping right after the data segment would merge with it: no brk randomization */
	if (msync(start_brk - page, page, MS_ASYNC) == 0)
		die(UNAVAILABLE, "scenarios %s: start_brk %p directly follows a mapping (brk not "
		    "randomized), so a page there would merge with it\n", scenario,
		    (void *)start_brk);
	p = mmap(start_brk, page, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p != start_brk)
		die(1, "scenarios %s: mmap at start_brk %p: %s\n", scenario, (void *)start_brk,
		    p == MAP_FAILED ? strerror(errno) : "placed elsewhere");
	touch(p, page);
	keep = p;
	add(" addr=%p start_brk=%p", (void *)p, (void *)start_brk);
}

/*
 * A private, writable mapping of /dev/mem from physical address 0 (the first MiB is open
 * to root under CONFIG_STRICT_DEVMEM): a VM_PFNMAP area, as remap_pfn_range() makes it.
 * Writing its first page copies that page on write into an ordinary anonymous page; a
 * second, read-only view of the same physical page shows the write did not reach it.
 */
static void devmem_private(int argc, char **argv)
{
	long pages = number(argc, argv, 2, 4);
	long bytes = pages * page;
	volatile char *p, *view;
	char before;
	int fd = open("/dev/mem", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		die(UNAVAILABLE, "scenarios %s: /dev/mem: %s (needs root and CONFIG_DEVMEM)\n",
		    scenario, strerror(errno));
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	view = mmap(NULL, page, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED || view == MAP_FAILED)
		die(UNAVAILABLE, "scenarios %s: mmap of /dev/mem: %s\n", scenario,
		    strerror(errno));
	close(fd);
	before = view[0];
	p[0] = (char)~before;
	if (p[0] == before || view[0] != before)
		die(1, "scenarios %s: the write was not copied on write\n", scenario);
	munmap((void *)view, page);
	keep = p;
	add(" pages=%ld addr=%p", pages, (void *)p);
}

/*
 * One small memfd mapped `count` times, every page of every mapping present: smaps counts
 * each mapping's pages, so the resident total is count times the file, while the memory
 * used is the file once (and the page tables).  Cheap gigabytes of Rss.  The file is
 * written rather than fallocated, so its pages are up to date and a read fault maps its
 * neighbours too (fault-around): a read of each page then faults about one in sixteen.
 */
static void memfd_many(int argc, char **argv)
{
	long bytes = number(argc, argv, 2, 16) * MIB;
	long count = number(argc, argv, 3, 160);
	int fd = memfd_create("memuse-scenario", MFD_CLOEXEC);
	static char chunk[64 * 1024];
	char *first = NULL;
	long sum = 0;

	if (fd < 0)
		die(UNAVAILABLE, "scenarios %s: memfd_create: %s\n", scenario, strerror(errno));
	memset(chunk, 1, sizeof(chunk));
	for (long done = 0; done < bytes; done += sizeof(chunk))
		if (write(fd, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk))
			die(UNAVAILABLE, "scenarios %s: writing the memfd: %s\n", scenario,
			    strerror(errno));
	for (long i = 0; i < count; i++) {
		volatile char *p = mmap(NULL, bytes, PROT_READ, MAP_SHARED, fd, 0);

		if (p == MAP_FAILED)
			die(UNAVAILABLE, "scenarios %s: mapping %ld of %ld: %s\n", scenario, i + 1,
			    count, strerror(errno));
		for (long offset = 0; offset < bytes; offset += page)
			sum += p[offset];
		if (!first)
			first = (char *)p;
	}
	close(fd);
	keep = first;
	add(" bytes=%ld count=%ld addr=%p sum=%ld", bytes, count, (void *)first, sum);
}

static const struct {
	const char *name;
	void (*run)(int argc, char **argv);
} table[] = {
	{ "do-nothing", do_nothing },
	{ "heap-active", heap_active },
	{ "heap-passive", heap_passive },
	{ "stack", stack },
	{ "heap-1g", heap_1g },
	{ "mmap-anon", mmap_anon },
	{ "thp", thp },
	{ "threads", threads },
	{ "heap-dontneed", heap_dontneed },
	{ "heap-read-only", heap_read_only },
	{ "sparse-64g", sparse_64g },
	{ "hugetlb", hugetlb },
	{ "thp-protnone", thp_protnone },
	{ "hwpoison", hwpoison },
	{ "brk-page", brk_page },
	{ "devmem-private", devmem_private },
	{ "memfd-many", memfd_many },
};

int main(int argc, char **argv)
{
	size_t i;

	page = sysconf(_SC_PAGESIZE);
	if (argc >= 2 && !strcmp(argv[1], "--list")) {
		for (i = 0; i < sizeof(table) / sizeof(table[0]); i++)
			if (write(1, table[i].name, strlen(table[i].name)) < 0 || write(1, "\n", 1) < 0)
				return 1;
		return 0;
	}
	if (argc < 2)
		die(2, "usage: scenarios NAME [ARGS] | scenarios --list\n");
	scenario = argv[1];
	/* a stopped child whose parent died would wait forever */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
		if (!strcmp(table[i].name, scenario)) {
			table[i].run(argc, argv);
			stop_then_exit();
		}
	}
	die(2, "scenarios: unknown scenario %s (scenarios --list shows them)\n", scenario);
	return 2;
}
