/*
 * The guest side of the kernel-matrix layer: a tiny static "syscall runner".
 *
 * busybox cannot show what a single system call answered (its sh reruns a
 * file that fails with ENOEXEC as a script; its echo and printf may split or
 * rewrite a write), so every observation goes through this program, which
 * the host compiles with `gcc -static` and puts into the initramfs.
 *
 *   helper batch JOBS OUT   run the operations in JOBS (written by
 *                           tests/vm/protocol.py), append one result record
 *                           per operation to OUT
 *   helper ARGS...          (any other call: as a binfmt_misc interpreter,
 *                           installed as /t/showargs) print argv, AT_FLAGS
 *                           and AT_EXECFD
 *
 * JOBS is a sequence of records: op (1 byte), path (u32 length + bytes),
 * data (u32 length + bytes). OUT gets, per record: op (1 byte), errno
 * (i32, 0 for success), payload (u32 length + bytes). All integers are
 * little-endian. The host decides what to do; this program only does it.
 *
 * Ops:
 *   W  open(path, O_WRONLY), then exactly one write(2) of data; errno of
 *      whichever failed (payload "open" or "write" tells which)
 *   R  read the whole file
 *   S  snapshot a directory: for each name in readdir order, the name and
 *      the file's content (or its errno); payload is a list of
 *      (u32 len name, i32 errno, u32 len content)
 *   M  mount binfmt_misc at path        U  umount path
 *   T  open(path, O_WRONLY) and close: the errno (ETXTBSY …)
 *   X  fork; the child execs path with argv = data split at NUL bytes
 *      (first item is argv[0]); payload: u8 kind ('E' exec failed with
 *      errno, 'S' exit status), i32 value, then the output (stdout+stderr)
 *   C  copy file data -> path (mode 0755), for interpreters to pin
 *   N  unshare(CLONE_NEWUSER | CLONE_NEWNS) in this process, map uid/gid 0
 *      to 0 (one id, all an unprivileged map may hold), make every mount
 *      private; later ops run there (payload: the step that failed)
 *   D  unlink path (errno)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int out_fd = -1;

static void die(const char *what)
{
	dprintf(2, "helper: %s: %s\n", what, strerror(errno));
	exit(2);
}

static void put(const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(out_fd, c, n);
		if (w < 0)
			die("write result");
		c += w;
		n -= (size_t)w;
	}
}

static void put_u32(uint32_t v) { put(&v, 4); }
static void put_i32(int32_t v) { put(&v, 4); }

struct buf {
	char *p;
	size_t len, cap;
};

static void buf_add(struct buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			die("realloc");
	}
	memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void result(char op, int err, const struct buf *payload)
{
	put(&op, 1);
	put_i32(err);
	put_u32(payload ? (uint32_t)payload->len : 0);
	if (payload && payload->len)
		put(payload->p, payload->len);
}

static int read_all(const char *path, struct buf *b)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	char tmp[4096];
	ssize_t r;
	if (fd < 0)
		return errno;
	while ((r = read(fd, tmp, sizeof tmp)) > 0)
		buf_add(b, tmp, (size_t)r);
	int err = r < 0 ? errno : 0;
	close(fd);
	return err;
}

static void op_write(const char *path, const char *data, uint32_t len)
{
	struct buf b = {0};
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		int err = errno;
		buf_add(&b, "open", 4);
		result('W', err, &b);
		free(b.p);
		return;
	}
	ssize_t w = write(fd, data, len);
	int err = w < 0 ? errno : 0;
	close(fd);
	buf_add(&b, "write", 5);
	if (!err && (uint32_t)w != len) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, " short %zd", w);
		buf_add(&b, msg, (size_t)n);
	}
	result('W', err, &b);
	free(b.p);
}

static void op_snapshot(const char *path)
{
	struct buf b = {0};
	DIR *d = opendir(path);
	if (!d) {
		result('S', errno, NULL);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		struct buf content = {0};
		char full[4096];
		int err = 0;
		uint32_t nlen = (uint32_t)strlen(e->d_name);
		snprintf(full, sizeof full, "%s/%s", path, e->d_name);
		if (strcmp(e->d_name, "register"))
			err = read_all(full, &content);
		buf_add(&b, &nlen, 4);
		buf_add(&b, e->d_name, nlen);
		int32_t e32 = err;
		uint32_t clen = (uint32_t)content.len;
		buf_add(&b, &e32, 4);
		buf_add(&b, &clen, 4);
		if (content.len)
			buf_add(&b, content.p, content.len);
		free(content.p);
	}
	closedir(d);
	result('S', 0, &b);
	free(b.p);
}

static void op_exec(const char *path, const char *data, uint32_t len)
{
	char *argv[64];
	int argc = 0;
	uint32_t i = 0;
	while (i < len && argc < 63) {
		argv[argc++] = (char *)data + i;
		i += (uint32_t)strlen(data + i) + 1;
	}
	argv[argc] = NULL;
	char *envp[] = {"PATH=/bin:/sbin", NULL};
	int out[2], errp[2];
	if (pipe2(out, O_CLOEXEC) || pipe2(errp, O_CLOEXEC))
		die("pipe");
	pid_t pid = fork();
	if (pid < 0)
		die("fork");
	if (!pid) {
		dup2(out[1], 1);
		dup2(out[1], 2);
		alarm(20);
		execve(path, argv, envp);
		int err = errno;
		if (write(errp[1], &err, 4) != 4)
			_exit(126);
		_exit(127);
	}
	close(out[1]);
	close(errp[1]);
	struct buf output = {0};
	char tmp[4096];
	ssize_t r;
	while ((r = read(out[0], tmp, sizeof tmp)) > 0)
		buf_add(&output, tmp, (size_t)r);
	close(out[0]);
	int child_err = 0;
	ssize_t got = read(errp[0], &child_err, 4);
	close(errp[0]);
	int status = 0;
	waitpid(pid, &status, 0);
	struct buf b = {0};
	char kind = got == 4 ? 'E' : 'S';
	int32_t value = got == 4 ? child_err : status;
	buf_add(&b, &kind, 1);
	buf_add(&b, &value, 4);
	if (output.len)
		buf_add(&b, output.p, output.len);
	result('X', 0, &b);
	free(b.p);
	free(output.p);
}

static void op_copy(const char *path, const char *src)
{
	struct buf b = {0};
	int err = read_all(src, &b);
	if (!err) {
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0755);
		if (fd < 0 || write(fd, b.p, b.len) != (ssize_t)b.len)
			err = errno;
		if (fd >= 0 && close(fd))
			err = errno;
	}
	free(b.p);
	result('C', err, NULL);
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return errno;
	int err = write(fd, text, strlen(text)) < 0 ? errno : 0;
	close(fd);
	return err;
}

static void op_userns(void)
{
	struct buf b = {0};
	const char *step = "unshare";
	int err = 0;
	if (unshare(CLONE_NEWUSER | CLONE_NEWNS))
		err = errno;
	/* Only our own ids can be mapped from inside (as unshare --map-root-user). */
	if (!err) {
		step = "uid_map";
		err = write_file("/proc/self/uid_map", "0 0 1\n");
	}
	if (!err) {
		step = "setgroups";
		err = write_file("/proc/self/setgroups", "deny\n");
	}
	if (!err) {
		step = "gid_map";
		err = write_file("/proc/self/gid_map", "0 0 1\n");
	}
	if (!err) {
		step = "private";
		if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
			err = errno;
	}
	buf_add(&b, step, strlen(step));
	result('N', err, &b);
	free(b.p);
}

static int batch(const char *jobs, const char *outpath)
{
	struct buf in = {0};
	int err = read_all(jobs, &in);
	if (err) {
		errno = err;
		die(jobs);
	}
	out_fd = open(outpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (out_fd < 0)
		die(outpath);
	size_t pos = 0;
	while (pos < in.len) {
		char op = in.p[pos++];
		uint32_t plen, dlen;
		memcpy(&plen, in.p + pos, 4);
		pos += 4;
		char *path = malloc(plen + 1);
		memcpy(path, in.p + pos, plen);
		path[plen] = 0;
		pos += plen;
		memcpy(&dlen, in.p + pos, 4);
		pos += 4;
		char *data = malloc(dlen + 1);
		memcpy(data, in.p + pos, dlen);
		data[dlen] = 0;
		pos += dlen;
		struct buf b = {0};
		switch (op) {
		case 'W':
			op_write(path, data, dlen);
			break;
		case 'R':
			err = read_all(path, &b);
			result('R', err, &b);
			break;
		case 'S':
			op_snapshot(path);
			break;
		case 'M':
			result('M', mount("none", path, "binfmt_misc", 0, NULL) ? errno : 0, NULL);
			break;
		case 'U':
			result('U', umount(path) ? errno : 0, NULL);
			break;
		case 'T': {
			int fd = open(path, O_WRONLY | O_CLOEXEC);
			result('T', fd < 0 ? errno : 0, NULL);
			if (fd >= 0)
				close(fd);
			break;
		}
		case 'X':
			op_exec(path, data, dlen);
			break;
		case 'C':
			op_copy(path, data);
			break;
		case 'N':
			op_userns();
			break;
		case 'D':
			result('D', unlink(path) ? errno : 0, NULL);
			break;
		default:
			dprintf(2, "helper: unknown op %d\n", op);
			exit(2);
		}
		free(b.p);
		free(path);
		free(data);
	}
	close(out_fd);
	return 0;
}

/* As an interpreter: what the kernel handed over. */
static int showargs(int argc, char **argv)
{
	unsigned long auxv[2];
	long at_flags = -1, at_execfd = -1;
	int fd = open("/proc/self/auxv", O_RDONLY);
	if (fd >= 0) {
		while (read(fd, auxv, sizeof auxv) == sizeof auxv && auxv[0]) {
			if (auxv[0] == 8) /* AT_FLAGS */
				at_flags = (long)auxv[1];
			if (auxv[0] == 2) /* AT_EXECFD */
				at_execfd = (long)auxv[1];
		}
		close(fd);
	}
	printf("argc %d\n", argc);
	for (int i = 0; i < argc; i++)
		printf("arg %s\n", argv[i]);
	printf("at_flags %ld\nat_execfd %ld\n", at_flags, at_execfd);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "batch"))
		return batch(argv[2], argv[3]);
	/* Anything else is a binfmt_misc interpreter's call. */
	return showargs(argc, argv);
}
