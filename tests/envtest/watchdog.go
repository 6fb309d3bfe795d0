// The parent watchdog: a server started by a test must not outlive the test process,
// even when that process is killed with SIGKILL and runs no cleanup. Does I/O (exits the
// process, removes a directory).
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

// watchParent exits this process as soon as the process that started it is gone.
//
// Why not PR_SET_PDEATHSIG: that signal fires when the parent *thread* that forked us
// exits, and a Rust test harness starts the shared control plane from whichever test
// thread came first; that thread ends with its test while the other tests still use the
// servers. Watching the parent process id is what we mean: when the test process exits,
// we are re-parented (to init or a subreaper) and getppid changes.
//
// KILN_ENVTEST_PARENT_PID, when set, names the process to watch (the harness sets it to
// its own pid, so a server spawned through a wrapper still follows the test process).
// KILN_ENVTEST_CLEANUP_DIR, when set, is removed on the way out: the harness gives it to
// one server, so that a killed test leaves neither processes nor files behind.
func watchParent() {
	parent := os.Getppid()
	if raw := os.Getenv("KILN_ENVTEST_PARENT_PID"); raw != "" {
		pid, err := strconv.Atoi(raw)
		if err != nil || pid <= 1 {
			fmt.Fprintf(os.Stderr, "kiln-envtest: ignoring KILN_ENVTEST_PARENT_PID=%q: not a process id\n", raw)
		} else {
			parent = pid
		}
	}
	cleanup := os.Getenv("KILN_ENVTEST_CLEANUP_DIR")
	direct := parent == os.Getppid()
	go func() {
		for {
			if !alive(parent, direct) {
				fmt.Fprintf(os.Stderr, "kiln-envtest: parent process %d is gone; exiting\n", parent)
				if cleanup != "" {
					_ = os.RemoveAll(cleanup)
				}
				os.Exit(3)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
}

// alive tells whether pid is still our parent (direct) or, for a pid named by the harness
// that is not our direct parent, whether it still exists as a process that is not a zombie.
func alive(pid int, direct bool) bool {
	if direct {
		return os.Getppid() == pid
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name, which may itself hold spaces.
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] != 'Z' && stat[i+2] != 'X'
		}
	}
	return false
}
