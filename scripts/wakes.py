"""Buckets `perf script` output of sched:sched_waking (with -g) by the waker's kernel stack.

Usage: wakes.py PERF_SCRIPT_TXT TIDS_FILE [MESSAGES]
Only wake-ups of the threads listed in TIDS_FILE (one id per line) are counted.
"""
import collections
import re
import sys


def cause(stack):
    j = ",".join(stack)
    if "io_eventfd" in j:
        if "io_submit_sqes" in j:
            return "a CQE posted inline at submit signals the ring eventfd -> a waiter"
        return "a CQE posted by task work signals the ring eventfd -> a waiter"
    if "task_work_add" in j or "io_req_normal_work_add" in j:
        return "io_uring task work -> its sleeping submitter"
    if "eventfd_write" in j:
        return "the port's wake-up eventfd -> a waiter (post / kick / poller interrupt)"
    if "timerfd" in j or "hrtimer_wakeup" in j:
        return "a timer (alarm timerfd / wait timeout)"
    if "ep_poll_callback" in j:
        return "socket readiness -> an epoll_wait waiter"
    if "__io_submit_flush_completions" in j or "io_cqring_wake" in j:
        if "io_submit_sqes" in j:
            return "a CQE posted inline at submit -> the poller in io_uring_enter"
        return "a CQE posted by task work -> the poller in io_uring_enter"
    if "futex" in j:
        return "futex -> a parked thread (the scheduler's hand-off / ready items)"
    return "other: " + ",".join(stack[:6])


def main():
    path, tids_path = sys.argv[1], sys.argv[2]
    msgs = float(sys.argv[3]) if len(sys.argv) > 3 else None
    tids = set(open(tids_path).read().split())
    counts = collections.Counter()
    for event in open(path).read().split("\n\n"):
        lines = event.strip().split("\n")
        if not lines or "sched_waking" not in lines[0]:
            continue
        m = re.search(r"comm=(\S+) pid=(\d+)", lines[0])
        if not m or m.group(2) not in tids:
            continue
        stack = [l.split()[1].split("+")[0] for l in lines[1:] if len(l.split()) > 1]
        counts[cause(stack)] += 1
    n = sum(counts.values())
    per = f" ({n / msgs:.3f} per message)" if msgs else ""
    print(f"wake-ups of the server's threads: {n}{per}")
    for k, v in counts.most_common(10):
        per = f" {v / msgs:.3f}/msg" if msgs else ""
        print(f"{v:8d} {100 * v / max(n, 1):5.1f}%{per}  {k}")


main()
