/*
 * noop: the tiny static program every pre-pull init container runs.
 *
 * Pre-pull pods only need the kubelet to pull an image; what runs in it does not
 * matter, but many images have no /bin/sh.  The imagewarden image ships this binary
 * at /usr/local/libexec/imagewarden/noop (imagewarden.prepull.render.NOOP_BINARY_PATH);
 * a first init container copies it into an emptyDir and each image's init container
 * runs it from there, so any image of the node's architecture works.
 *
 *   noop            exit 0 at once
 *   noop --sleep    wait until SIGTERM or SIGINT, then exit 0 (the DaemonSet's main
 *                   container, like the pause image; as PID 1 a signal without a
 *                   handler would be ignored, so handlers are installed)
 *
 * Build: gcc -static -Os -o noop noop.c
 */
#include <signal.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int signal_number) {
    (void)signal_number;
    stop_requested = 1;
}

static int sleep_until_stopped(void) {
    struct sigaction action;
    sigset_t blocked, previous;

    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    if (sigaction(SIGTERM, &action, NULL) != 0 || sigaction(SIGINT, &action, NULL) != 0) {
        return 1;
    }
    /* Block the signals while testing the flag so that one arriving between the test
       and the wait is not lost: sigsuspend unblocks and waits atomically. */
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGTERM);
    sigaddset(&blocked, SIGINT);
    sigprocmask(SIG_BLOCK, &blocked, &previous);
    while (!stop_requested) {
        sigsuspend(&previous);
    }
    return 0;
}

int main(int argc, char **argv) {
    static const char usage[] = "usage: noop [--sleep]\n";

    if (argc == 1) {
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "--sleep") == 0) {
        return sleep_until_stopped();
    }
    if (write(STDERR_FILENO, usage, sizeof usage - 1) < 0) {
        return 2;
    }
    return 2;
}
