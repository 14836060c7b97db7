/*
 * Callers of memuse that Python cannot be: tests/guest compiles this in the guest and runs it.
 *
 *   callers i386 NR PID KIND...   memuse through the i386 entry (int $0x80) of a 64-bit
 *                                 process: no 32-bit libraries needed.  Prints one line
 *                                 "KIND RESULT" per kind, RESULT the 32-bit value the
 *                                 caller's long holds (a negative errno on failure).
 *   callers shared-mm NR          makes itself not dumpable, starts a sibling that shares its
 *                                 mm (clone(CLONE_VM) without CLONE_THREAD: another thread
 *                                 group) and a forked child that does not, and asks memuse
 *                                 and /proc/PID/smaps about both.  Prints one JSON object.
 *
 * Exit status 2: bad usage; 1: a failure, with a message on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define KINDS 5
#define SIBLING_STACK (64 * 1024)

static long argument(const char *text)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(text, &end, 0);
	if (errno || *end || end == text) {
		fprintf(stderr, "callers: not a number: %s\n", text);
		exit(2);
	}
	return value;
}

/*
 * The i386 system call ABI: number in eax, arguments in ebx and ecx, result in eax.  The
 * kernel sees a compat (32-bit) system call; r8-r11 are not preserved by that entry.
 */
#if defined(__x86_64__)
static int i386_syscall(int nr, int first, int second)
{
	int result;

	asm volatile("int $0x80"
		     : "=a"(result)
		     : "0"(nr), "b"(first), "c"(second)
		     : "memory", "r8", "r9", "r10", "r11");
	return result;
}
#else
/* other architectures (arm64) have no i386 entry: the command is a usage error there */
static int i386_syscall(int nr, int first, int second)
{
	(void)nr;
	(void)first;
	(void)second;
	fprintf(stderr, "callers: no i386 entry on this architecture\n");
	exit(2);
}
#endif

static int i386(int argc, char **argv)
{
	int nr, pid;

	if (argc < 5) {
		fprintf(stderr, "usage: callers i386 NR PID KIND...\n");
		return 2;
	}
	nr = (int)argument(argv[2]);
	pid = (int)argument(argv[3]);
	for (int i = 4; i < argc; i++) {
		int kind = (int)argument(argv[i]);

		printf("%d %d\n", kind, i386_syscall(nr, pid, kind));
	}
	return 0;
}

static int park(void *unused)
{
	(void)unused;
	for (;;)
		pause();
	return 0;
}

/* {"memuse": {"1": [value, errno], ...}, "smaps": errno} for one target */
static void report(const char *name, long nr, pid_t pid, int last)
{
	char path[64];
	int fd;

	printf("\"%s\": {\"memuse\": {", name);
	for (int kind = 1; kind <= KINDS; kind++) {
		long value;

		errno = 0;
		value = syscall(nr, (long)pid, (long)kind);
		printf("%s\"%d\": [%ld, %d]", kind > 1 ? ", " : "", kind, value,
		       value < 0 ? errno : 0);
	}
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	printf("}, \"smaps\": %d}%s", fd < 0 ? errno : 0, last ? "" : ", ");
	if (fd >= 0)
		close(fd);
}

static int shared_mm(int argc, char **argv)
{
	static char stack[SIBLING_STACK] __attribute__((aligned(16)));
	pid_t sibling, forked;
	long nr;

	if (argc != 3) {
		fprintf(stderr, "usage: callers shared-mm NR\n");
		return 2;
	}
	nr = argument(argv[2]);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) {
		perror("callers: prctl(PR_SET_DUMPABLE)");
		return 1;
	}
	sibling = clone(park, stack + sizeof(stack), CLONE_VM | SIGCHLD, NULL);
	if (sibling < 0) {
		perror("callers: clone(CLONE_VM)");
		return 1;
	}
	forked = fork();
	if (forked == 0)
		park(NULL);
	if (forked < 0) {
		perror("callers: fork");
		kill(sibling, SIGKILL);
		return 1;
	}
	printf("{\"dumpable\": %d, ", prctl(PR_GET_DUMPABLE, 0, 0, 0, 0));
	report("sibling sharing the mm", nr, sibling, 0);
	report("forked child", nr, forked, 1);
	printf("}\n");
	kill(sibling, SIGKILL);
	kill(forked, SIGKILL);
	waitpid(sibling, NULL, 0);
	waitpid(forked, NULL, 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "i386"))
		return i386(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "shared-mm"))
		return shared_mm(argc, argv);
	fprintf(stderr, "usage: callers i386 NR PID KIND... | callers shared-mm NR\n");
	return 2;
}
